//! Redis (single server or Cluster) for glommio shards.
//!
//! redis-rs has no glommio runtime, so its tokio client runs on a helper thread (a
//! current-thread tokio runtime) and a shard hands it operations over a channel. Each
//! shard starts a bridge of its own, with its own thread and connection, so no shard
//! waits behind another's writes. Two ways of running the helper were measured (a tokio
//! client, and a synchronous connection sending whatever is queued as one pipeline;
//! `perf/RESULTS.md`, "Redis from a glommio shard"): they perform the same, and only the
//! tokio client comes with a Cluster implementation (`cluster-async`), so this is it.
//!
//! Order is part of the contract: operations reach Redis in the order they were handed
//! over (one channel, tasks first polled in spawn order on a current-thread runtime,
//! one multiplexed connection per server; to a cluster, one operation after another). The exchange relies on it: a write handed
//! over before a read is seen by that read, without waiting for the write's reply.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_channel::{mpsc, oneshot};
use futures_lite::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, Value};

/// One connection, to a single server or to a cluster (slots routed by key).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// What the helper thread runs: a command, or a script by its hash (`EVALSHA`).
///
/// A script Redis does not have fails (`NOSCRIPT`) instead of being loaded and retried
/// as redis-rs's `invoke_async` does: that retry would send it after operations handed
/// over later, breaking the order this module promises. Load scripts first
/// ([`load_script`]); a Redis that lost them (restarted) lost its data too.
pub enum Op {
    Cmd(Cmd),
    Script { script: &'static Script, keys: Vec<String>, args: Vec<String> },
    /// Several operations in one round trip, replied to as an array of their replies:
    /// one pipeline to a single server; to a cluster, whose pipelines must stay within
    /// one slot, each operation is sent at once without waiting for the others (they
    /// share each node's connection, so they are pipelined on the wire all the same).
    Batch(Vec<Op>),
}

impl Op {
    /// The commands it stands for, in order, with batches inside batches flattened.
    fn into_cmds(self, out: &mut Vec<Cmd>) {
        match self {
            Self::Cmd(cmd) => out.push(cmd),
            Self::Script { script, keys, args } => {
                out.push(redis::cmd("EVALSHA").arg(script.get_hash()).arg(keys.len()).arg(keys).arg(args).to_owned());
            }
            Self::Batch(ops) => ops.into_iter().for_each(|op| op.into_cmds(out)),
        }
    }
}

type Job = Box<dyn FnOnce(Option<Conn>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The handle shards keep: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct RedisBridge {
    tx: mpsc::UnboundedSender<Job>,
    /// Whether the helper thread has a connection (set once it connects).
    connected: Arc<std::sync::atomic::AtomicBool>,
    /// Whether that connection is to a cluster.
    cluster: Arc<std::sync::atomic::AtomicBool>,
    /// How long an operation may take, from being handed over to its reply.
    timeout: Duration,
}

async fn run_op<T: FromRedisValue>(mut conn: Conn, op: Op) -> redis::RedisResult<T> {
    let batch = matches!(op, Op::Batch(_));
    let mut cmds = Vec::new();
    op.into_cmds(&mut cmds);
    if !batch && let [cmd] = cmds.as_slice() {
        return cmd.query_async(&mut conn).await;
    }
    let replies = match &conn {
        Conn::Single(_) => {
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            pipe.query_async::<Vec<Value>>(&mut conn).await?
        }
        Conn::Cluster(_) => {
            // Aborted with the batch when it times out: a command must never reach Redis
            // after a later batch's (an old value over a new one).
            let mut sent = Aborting(
                cmds.into_iter()
                    .map(|cmd| {
                        let mut conn = conn.clone();
                        tokio::spawn(async move { cmd.query_async::<Value>(&mut conn).await })
                    })
                    .collect(),
            );
            let mut replies = Vec::with_capacity(sent.0.len());
            for reply in &mut sent.0 {
                replies.push(reply.await.map_err(|e| redis::RedisError::from((redis::ErrorKind::IoError, "batch task", e.to_string())))??);
            }
            replies
        }
    };
    T::from_owned_redis_value(Value::Array(replies))
}

/// Tasks that end when this is dropped: a batch's commands to a cluster, sent at once
/// and awaited in order, stop with the batch (its deadline) instead of going on alone.
struct Aborting(Vec<tokio::task::JoinHandle<redis::RedisResult<Value>>>);

impl Drop for Aborting {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Loads a script (on every master of a cluster), so that [`Op::Script`] finds it.
pub fn load_script(code: &str) -> Op {
    Op::Cmd(redis::cmd("SCRIPT").arg("LOAD").arg(code).to_owned())
}

/// The longest pause between two reconnection attempts to a single server (ms).
const RECONNECT_MAX_DELAY_MS: u64 = 500;

/// A cluster answers `cluster_enabled:1` in `INFO cluster`; then the URL (or the comma
/// separated URLs) are its seeds.
async fn connect(urls: &[String], timeout: Duration) -> redis::RedisResult<Conn> {
    let first = redis::Client::open(urls[0].as_str())?;
    let mut probe = first.get_multiplexed_async_connection_with_config(
        &redis::AsyncConnectionConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout),
    )
    .await?;
    let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut probe).await?;
    if info.contains("cluster_enabled:1") {
        // No retries inside the client: a command it sends again later can land after a
        // newer write to the same key. A failed write marks the hot state lost instead,
        // and the rewrite from the ledger that follows puts every key right.
        let client = redis::cluster::ClusterClient::builder(urls.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(0)
            .build()?;
        Ok(Conn::Cluster(client.get_async_connection().await?))
    } else {
        // Reconnects are paced by `backon`, whose exponential back-off starts at one
        // second and multiplies by `factor` (not milliseconds, as the redis-rs docs of
        // 0.32 read): its default of 100 meant a second try after ~100 s, and a Redis
        // back after a short outage went unused for about two minutes. Tries at most
        // every 0.5 s (plus jitter) instead; when they run out, the next operation (the
        // hot state's watchdog sends one every 250 ms) starts another round.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_factor(2)
            .set_max_delay(RECONNECT_MAX_DELAY_MS)
            .set_number_of_retries(8);
        Ok(Conn::Single(ConnectionManager::new_with_config(first, config).await?))
    }
}

impl RedisBridge {
    /// Starts the helper thread; it connects in the background (and keeps trying), so a
    /// Redis that is down at start only means operations fail until it is up.
    ///
    /// # Errors
    /// An unparsable URL, or no thread.
    pub fn start(urls: &str, timeout: Duration) -> Result<Self, String> {
        let urls: Vec<String> = urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect();
        if urls.is_empty() {
            return Err("no Redis URL".into());
        }
        for url in &urls {
            redis::Client::open(url.as_str()).map_err(|e| format!("Redis URL {}: {e}", crate::redact(url)))?;
        }
        let (tx, mut rx) = mpsc::unbounded::<Job>();
        let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cluster = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, cluster_flag) = (connected.clone(), cluster.clone());
        std::thread::Builder::new()
            .name("redis".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "no tokio runtime for Redis");
                        return;
                    }
                };
                rt.block_on(async move {
                    let conn: Arc<std::sync::Mutex<Option<Conn>>> = Arc::default();
                    let slot = conn.clone();
                    tokio::spawn(async move {
                        loop {
                            match connect(&urls, timeout).await {
                                Ok(c) => {
                                    let is_cluster = matches!(c, Conn::Cluster(_));
                                    cluster_flag.store(is_cluster, std::sync::atomic::Ordering::Release);
                                    let kind = if is_cluster { "cluster" } else { "single server" };
                                    tracing::info!(url = crate::redact(&urls[0]), kind, "Redis connected");
                                    if let Ok(mut s) = slot.lock() {
                                        *s = Some(c);
                                    }
                                    flag.store(true, std::sync::atomic::Ordering::Release);
                                    return;
                                }
                                Err(e) => {
                                    tracing::warn!(url = crate::redact(&urls[0]), error = %e, "Redis not reachable; retrying");
                                    tokio::time::sleep(Duration::from_millis(250)).await;
                                }
                            }
                        }
                    });
                    while let Some(job) = rx.next().await {
                        let c = conn.lock().ok().and_then(|c| c.clone());
                        // To a cluster, one operation at a time: the cluster client
                        // routes each request through tasks of its own and does not keep
                        // their order, so an operation handed over later could overtake
                        // an earlier one on the same key (a position written back over
                        // its liquidation was seen). A single server keeps the order on
                        // its one connection, and operations overlap there.
                        if matches!(c, Some(Conn::Cluster(_))) {
                            job(c).await;
                        } else {
                            tokio::spawn(job(c));
                        }
                    }
                });
            })
            .map_err(|e| format!("Redis thread: {e}"))?;
        Ok(Self { tx, connected, cluster, timeout })
    }

    pub fn connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the connection is to a cluster (where one call's keys must share a slot).
    pub fn is_cluster(&self) -> bool {
        self.cluster.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Hands `op` over now (in order with every earlier one); `done` runs on the helper
    /// thread with its result. Errors are strings: the caller only reports them.
    pub fn submit<T, F>(&self, op: Op, done: F)
    where
        T: FromRedisValue + Send + 'static,
        F: FnOnce(Result<T, String>) + Send + 'static,
    {
        self.submit_within(op, self.timeout, done);
    }

    /// [`Self::submit`] with a deadline of its own (bulk writes that queue behind each
    /// other need longer than one request).
    pub fn submit_within<T, F>(&self, op: Op, timeout: Duration, done: F)
    where
        T: FromRedisValue + Send + 'static,
        F: FnOnce(Result<T, String>) + Send + 'static,
    {
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let result = match conn {
                    None => Err("Redis not connected".to_owned()),
                    Some(conn) => match tokio::time::timeout(timeout, run_op::<T>(conn, op)).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("Redis did not answer within {} ms", timeout.as_millis())),
                    },
                };
                done(result);
            })
        });
        if let Err(e) = self.tx.unbounded_send(job) {
            // The helper thread is gone: the job is dropped unrun; say so to its owner.
            let job = e.into_inner();
            drop(job);
        }
    }

    /// Hands `op` over now and returns its reply, to await on any executor.
    pub fn call<T: FromRedisValue + Send + 'static>(&self, op: Op) -> impl Future<Output = Result<T, String>> + use<T> {
        let (tx, rx) = oneshot::channel();
        self.submit(op, move |r| {
            let _ = tx.send(r);
        });
        async move { rx.await.unwrap_or_else(|_| Err("Redis client stopped".into())) }
    }
}
