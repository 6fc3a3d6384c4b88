//! Process shape: one pinned glommio executor per configured core, joined by a channel
//! mesh, each accepting HTTP on the same port (SO_REUSEPORT) and owning its shard.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use exchange_io::http::HyperIo;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers};
use glommio::{LocalExecutorBuilder, Placement};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response};
use rustc_hash::FxHashMap;

use crate::accounts::Accounts;
use crate::api::error::{invalid, ApiError};
use crate::api::parse::{self, Input, Limits, Routed};
use crate::api::render;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::shard::protocol::{ApiRequest, HttpReply, Message, Reply, Request};
use crate::shard::rpc::Rpc;
use crate::shard::{handlers, startup, Shard};
use crate::shard_map::ShardMap;

/// Process-wide state every shard may read: health, shutdown, start barrier.
#[derive(Default)]
pub struct Health {
    pub stopping: AtomicBool,
    pub event_log_down: AtomicUsize,
    pub inflight: AtomicUsize,
    /// Cold storage (`cold::writer::{DISABLED, DOWN, OK}`).
    pub cold: std::sync::atomic::AtomicU8,
    /// Per shard, the state of its partitions' hot state (`shard::hot::{DISABLED, ..}`).
    pub hot: Vec<std::sync::atomic::AtomicU8>,
    arrived: AtomicUsize,
    /// At start only: per account partition, how far its snapshot holds each symbol's
    /// results (`None`: no snapshot).
    applied: std::sync::Mutex<FxHashMap<u32, Option<SymbolOffsets>>>,
}

/// Per symbol name, a log offset.
type SymbolOffsets = Vec<(String, u64)>;

impl Health {
    pub fn record_applied(&self, partition: u32, applied: Option<SymbolOffsets>) {
        if let Ok(mut map) = self.applied.lock() {
            map.insert(partition, applied);
        }
    }

    /// The offset of `symbol`'s log up to which every partition's snapshot holds its
    /// results: a symbol snapshot at or before it can be restored.
    pub fn applied_everywhere(&self, symbol: &str) -> u64 {
        let Ok(map) = self.applied.lock() else { return 0 };
        if map.len() < crate::accounts::PARTITIONS as usize {
            return 0;
        }
        map.values()
            .map(|a| a.as_ref().and_then(|v| v.iter().find(|(s, _)| s == symbol).map(|(_, o)| *o)).unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    /// Waits until every shard has arrived `round` times.
    async fn barrier(&self, round: usize, shards: usize) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while self.arrived.load(Ordering::Acquire) < round * shards {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Raises the locked-memory soft limit to the hard limit: glommio registers its I/O
/// buffers (`io_memory_kib` per core) as locked memory.
fn raise_memlock() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard);
    }
}

/// Runs the exchange until SIGTERM/SIGINT.
///
/// # Errors
/// Start-up failures (config, shard map, logs, executors), with context.
pub fn run(config: Config, mode: Mode) -> anyhow::Result<()> {
    let map = Arc::new(ShardMap::load(&config.shard_map)?);

    if config.redis.url.is_some() {
        tracing::info!("hot state: Redis, written behind the ledger");
    }
    if let Some(brokers) = &config.kafka.brokers {
        let topics = crate::shard::logs::topics(&config.kafka.topic_prefix);
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        futures_lite::future::block_on(exchange_io::kafka::ensure_topics(brokers, &topics, config.kafka.partitions))
            .map_err(anyhow::Error::msg)?;
        tracing::info!(brokers, "event log: Kafka");
    }
    if config.admin_key.is_none() {
        tracing::warn!("EXCHANGE_ADMIN_KEY is not set: the admin API is disabled");
    }
    raise_memlock();
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("data dir {}", config.data_dir.display()))?;
    let cores = config.shard_cores();
    let shards = cores.len();
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let initial = if config.redis.url.is_some() { crate::shard::hot::STALE } else { crate::shard::hot::DISABLED };
    let health = Arc::new(Health { hot: (0..shards).map(|_| std::sync::atomic::AtomicU8::new(initial)).collect(), ..Health::default() });
    let cold = match (&config.postgres.url, &config.kafka.brokers) {
        (Some(url), Some(brokers)) => {
            health.cold.store(crate::cold::writer::DOWN, Ordering::Release);
            crate::cold::writer::start(brokers.clone(), config.kafka.topic_prefix.clone(), url.clone(), health.clone(), metrics.clone())?;
            tracing::info!("cold storage: PostgreSQL, written from the event log");
            let prefix = &config.kafka.topic_prefix;
            match crate::cold::checkpoint::restore(url, prefix, &config.data_dir, Duration::from_secs(5)) {
                Ok(0) => {}
                Ok(n) => tracing::info!(checkpoints = n, "snapshots restored from PostgreSQL checkpoints"),
                Err(e) => tracing::warn!(error = format!("{e:#}"), "checkpoints not read: starting from the local snapshots"),
            }
            Some(crate::cold::ColdStorage {
                reader: crate::cold::reader::ColdReader::start(url.clone())?,
                checkpoints: crate::cold::checkpoint::Checkpoints::start(url.clone(), prefix.clone(), map.clone())?,
            })
        }
        (Some(_), None) => {
            tracing::warn!("cold storage follows the Kafka event log: EXCHANGE_POSTGRES_URL is ignored without EXCHANGE_KAFKA_BROKERS");
            None
        }
        _ => None,
    };
    let sync = match (config.persistence, &config.postgres.url) {
        (crate::config::Persistence::Async, _) => None,
        (crate::config::Persistence::Sync, Some(url)) => Some(crate::cold::sync::SyncStore::start(url, config.sync_connections)?),
        (crate::config::Persistence::Sync, None) => anyhow::bail!("EXCHANGE_PERSISTENCE=sync needs EXCHANGE_POSTGRES_URL"),
    };
    {
        let health = health.clone();
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "stopping: no new connections, finishing in-flight requests");
                health.stopping.store(true, Ordering::Release);
            }
        });
    }
    let mesh = MeshBuilder::<Message, _>::full(shards, 1024);
    let mut handles = Vec::new();
    for (id, core) in cores.iter().copied().enumerate() {
        let (map, config, metrics, health, mesh) = (map.clone(), config.clone(), metrics.clone(), health.clone(), mesh.clone());
        // Each core writes its own partitions over a connection of its own.
        let redis = match &config.redis.url {
            Some(url) => Some(
                exchange_io::redis::RedisBridge::start(url, Duration::from_millis(config.redis.timeout_ms)).map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        let cold = cold.clone();
        let sync = sync.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_kib * 1024)
            .spin_before_park(Duration::from_micros(config.spin_micros))
            .spawn(move || async move {
                let result =
                    shard_main(Startup { id, shards, map, config, metrics, health: health.clone(), redis, cold, sync, mode }, mesh).await;
                if let Err(e) = &result {
                    tracing::error!(shard = id, error = format!("{e:#}"), "shard failed");
                    health.stopping.store(true, Ordering::Release);
                }
                result
            })
            .map_err(|e| anyhow::anyhow!("starting the executor for shard {id} on core {core} (see README: memlock): {e}"))?;
        handles.push(handle);
    }
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(anyhow::anyhow!("executor: {e}")),
        }
    }
    failure.map_or(Ok(()), Err)
}

/// What a shard starts with.
struct Startup {
    id: usize,
    shards: usize,
    map: Arc<ShardMap>,
    config: Arc<Config>,
    metrics: Metrics,
    health: Arc<Health>,
    redis: Option<exchange_io::redis::RedisBridge>,
    cold: Option<crate::cold::ColdStorage>,
    sync: Option<crate::cold::sync::SyncStore>,
    mode: Mode,
}

/// What the process is started for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Serve,
    /// Replay the logs, write the hot state to Redis, exit.
    RebuildState,
}

async fn shard_main(start: Startup, mesh: MeshBuilder<Message, glommio::channels::channel_mesh::Full>) -> anyhow::Result<()> {
    let Startup { id, shards, map, config, metrics, health, redis, cold, sync, mode } = start;
    let (senders, receivers) = mesh.join().await.map_err(|e| anyhow::anyhow!("mesh join failed: {e}"))?;
    let now_micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let shard = Rc::new(Shard {
        id,
        shards,
        map,
        rpc: Rpc::new(senders),
        accounts: RefCell::new(Box::new(Accounts::new(config.rate_limit, now_micros))),
        account_logs: RefCell::new(FxHashMap::default()),
        streams: RefCell::new(FxHashMap::default()),
        metrics: metrics.shard(id),
        all_metrics: metrics,
        health: health.clone(),
        snapshotting: Cell::new(false),
        wire_seq: Cell::new(0),
        account_in_doubt: RefCell::default(),
        redis: redis.map(|bridge| {
            crate::shard::hot::RedisHot::new(bridge, crate::redis_state::Keys::new(&config.redis.prefix), health.clone(), id)
        }),
        cold: cold.clone(),
        sync,
        kafka: match &config.kafka.brokers {
            Some(brokers) => Some(
                crate::shard::logs::KafkaBackend::start(
                    brokers,
                    config.kafka.partitions,
                    &config.kafka.topic_prefix,
                    Duration::from_millis(config.kafka.timeout_ms),
                )
                .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        },
        config,
    });
    listen_mesh(&shard, receivers);
    startup::recover_accounts(&shard).await?;
    health.barrier(1, shards).await;
    startup::recover_symbols(&shard).await?;
    health.barrier(2, shards).await;
    if mode == Mode::RebuildState {
        return rebuild_state(&shard).await;
    }
    if shard.redis.is_some() {
        glommio::spawn_local(crate::shard::hot::write_behind(shard.clone())).detach();
        glommio::spawn_local(crate::shard::hot::watch(shard.clone())).detach();
    }
    serve(shard).await
}

/// `exchange rebuild-state`: the logs are replayed (above); write every user to Redis.
async fn rebuild_state(shard: &Rc<Shard>) -> anyhow::Result<()> {
    if shard.redis.is_none() {
        anyhow::bail!("rebuild-state needs EXCHANGE_REDIS_URL");
    }
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        match crate::shard::hot::rebuild(shard).await {
            Ok(users) => {
                tracing::info!(shard = shard.id, users, ms = started.elapsed().as_millis() as u64, "hot state written");
                crate::shard::hot::mark_clean(shard).await;
                return Ok(());
            }
            Err(e) if std::time::Instant::now() > deadline => anyhow::bail!("rebuilding the hot state: {e}"),
            Err(_) => glommio::timer::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// One task per peer: replies complete waiting callers; requests are handled. Results
/// and risk steps are handled inline (they never wait), so they apply in arrival order;
/// the rest get a task of their own so the loop never stalls.
fn listen_mesh(shard: &Rc<Shard>, mut receivers: Receivers<Message>) {
    for (_, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(message) = rx.recv().await {
                match message {
                    Message::Reply { id, body } => shard.rpc.complete(id, body),
                    Message::Request { from, id, body } => {
                        let inline =
                            matches!(body, Request::Apply { .. } | Request::Release { .. } | Request::Reserve { .. } | Request::LastPrices);
                        if inline {
                            let reply = handlers::handle(shard.clone(), body).await;
                            let shard = shard.clone();
                            glommio::spawn_local(async move { shard.rpc.reply(from, id, reply).await }).detach();
                        } else {
                            let shard = shard.clone();
                            glommio::spawn_local(async move {
                                let reply = handlers::handle(shard.clone(), body).await;
                                shard.rpc.reply(from, id, reply).await;
                            })
                            .detach();
                        }
                    }
                }
            }
        })
        .detach();
    }
}

async fn serve(shard: Rc<Shard>) -> anyhow::Result<()> {
    let listener = glommio::net::TcpListener::bind(shard.config.http_addr)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", shard.config.http_addr))?;
    tracing::info!(shard = shard.id, addr = %shard.config.http_addr, "serving");
    let connections = Rc::new(Cell::new(0usize));
    // One accept stays pending across the stop checks: dropping a pending accept can
    // lose a connection the kernel completed at that instant (it stays established,
    // its request unread, until the client gives up), so only a finished accept is
    // replaced, and the timer alone is raced against it.
    let mut accept = Box::pin(listener.accept());
    loop {
        if shard.health.stopping.load(Ordering::Acquire) {
            break;
        }
        let accepted = futures_lite::future::or(async { Some(accept.as_mut().await) }, async {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            None
        })
        .await;
        let Some(accepted) = accepted else { continue };
        accept = Box::pin(listener.accept());
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        if connections.get() >= shard.config.limits.max_connections_per_core {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        connections.set(connections.get() + 1);
        let (shard, connections) = (shard.clone(), connections.clone());
        glommio::spawn_local(async move {
            connection(shard, stream).await;
            connections.set(connections.get() - 1);
        })
        .detach();
    }
    drop(accept);
    drop(listener);
    // Finish what is in flight, then leave; every acknowledged command is already durable.
    for _ in 0..100 {
        if shard.health.inflight.load(Ordering::Acquire) == 0 {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    crate::shard::hot::mark_clean(&shard).await;
    tracing::info!(shard = shard.id, "stopped");
    Ok(())
}

async fn connection(shard: Rc<Shard>, stream: glommio::net::TcpStream) {
    let io = HyperIo::new(stream);
    let activity = io.activity();
    let idle = Duration::from_secs(shard.config.limits.idle_timeout_secs.max(1));
    let header_timeout = Duration::from_secs(shard.config.limits.header_timeout_secs.max(1));
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req| {
        seen.headers_done();
        let shard = shard.clone();
        async move { Ok::<_, Infallible>(respond(&shard, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().keep_alive(true).max_buf_size(16 * 1024).serve_connection(io, service);
    // Closes connections that stay silent (idle keep-alive) or send a request's headers
    // too slowly (slowloris). Request bodies have their own deadline in `answer`.
    let watchdog = async {
        loop {
            glommio::timer::sleep(Duration::from_millis(500)).await;
            let slow = activity.request_started.get().is_some_and(|t| t.elapsed() > header_timeout);
            if slow || activity.last_read.get().elapsed() > idle {
                break;
            }
        }
    };
    futures_lite::future::or(
        async {
            let _ = conn.await;
        },
        watchdog,
    )
    .await;
}

struct InFlight<'a>(&'a Shard);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.health.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn respond(shard: &Rc<Shard>, req: HttpRequest<Incoming>) -> Response<Full<Bytes>> {
    shard.health.inflight.fetch_add(1, Ordering::AcqRel);
    let _guard = InFlight(shard);
    shard.metrics.requests.inc();
    let reply = answer(shard, req).await;
    let mut response = Response::builder()
        .status(reply.status)
        .header("content-type", if reply.status == 200 && reply.body.first() != Some(&b'{') && reply.body.first() != Some(&b'[') { "text/plain; version=0.0.4" } else { "application/json" });
    if let Some(secs) = reply.retry_after {
        response = response.header("retry-after", secs.to_string());
    }
    response.body(Full::new(Bytes::from(reply.body))).unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn answer(shard: &Rc<Shard>, req: HttpRequest<Incoming>) -> HttpReply {
    let (parts, body) = req.into_parts();
    let limit = shard.config.limits.max_body_bytes;
    let collected = futures_lite::future::or(async { Some(read_body(body, limit).await) }, async {
        glommio::timer::sleep(Duration::from_secs(10)).await;
        None
    })
    .await;
    let mut body = match collected {
        Some(Ok(b)) => b,
        Some(Err(())) => return invalid(format!("body larger than {limit} bytes or unreadable")).reply(),
        None => return invalid("body not received in time").reply(),
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let input = Input {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        api_key: header("x-api-key"),
        admin_key: header("x-admin-key"),
        body: &mut body,
    };
    let limits = Limits { map: &shard.map, admin_key: shard.config.admin_key.as_deref(), max_json_depth: shard.config.limits.max_json_depth };
    let routed = match parse::route(input, &limits) {
        Ok(r) => r,
        Err(e) => return e.reply(),
    };
    let (to, req): (usize, ApiRequest) = match routed {
        Routed::Health => return health(shard),
        Routed::Metrics => {
            shard.all_metrics.set_hot_states(shard.health.hot.iter().map(|h| h.load(Ordering::Acquire)));
            return HttpReply { status: 200, body: shard.all_metrics.render().into_bytes(), retry_after: None };
        }
        Routed::Symbols => return render::ok(&render::symbols(&shard.map, shard.shards)),
        Routed::Check => return check(shard).await,
        Routed::Symbol(symbol, req) => (shard.symbol_owner(symbol), req),
        Routed::Partition(partition, req) => (shard.partition_owner(partition), req),
    };
    match shard.ask(to, Request::Api(req)).await {
        Some(Reply::Http(reply)) => reply,
        _ => ApiError::Unavailable("shard unavailable".into()).reply(),
    }
}

/// Reads a body of at most `limit` bytes. A larger one is read on and dropped (up to 16
/// times the limit) so that the client, still sending, can read the 400 that follows
/// instead of a connection reset.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Vec<u8>, ()> {
    let mut out = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen <= limit {
                out.extend_from_slice(data);
            } else if seen > limit.saturating_mul(16) {
                return Err(());
            }
        }
    }
    if seen > limit { Err(()) } else { Ok(out) }
}

/// `POST /admin/v1/check`: one consistency check on every shard, reported together.
async fn check(shard: &Rc<Shard>) -> HttpReply {
    let mut users = 0;
    let mut repaired = Vec::new();
    for to in 0..shard.shards {
        match shard.ask(to, Request::Check).await {
            Some(Reply::Checked(Ok(r))) => {
                users += r.users;
                repaired.extend(r.repaired);
            }
            Some(Reply::Checked(Err(e))) => return ApiError::Unavailable(format!("shard {to}: {e}")).reply(),
            _ => return ApiError::Unavailable(format!("shard {to} did not answer")).reply(),
        }
    }
    render::ok(&serde_json::json!({ "clean": repaired.is_empty(), "users": users, "repaired": repaired }))
}

fn health(shard: &Shard) -> HttpReply {
    use crate::shard::hot::{DISABLED, READY, REBUILDING};
    let log_ok = shard.health.event_log_down.load(Ordering::Acquire) == 0;
    let worst = shard.health.hot.iter().map(|h| h.load(Ordering::Acquire)).filter(|s| *s != DISABLED).min();
    let state = match worst {
        None | Some(READY) => "ok",
        Some(REBUILDING) => "rebuilding",
        Some(_) => "down",
    };
    let cold = match shard.health.cold.load(Ordering::Acquire) {
        crate::cold::writer::OK => "ok",
        crate::cold::writer::DOWN => "down",
        crate::cold::writer::LAGGING => "lagging",
        _ => "disabled",
    };
    render::ok(&serde_json::json!({
        "status": if log_ok && state == "ok" { "ok" } else { "degraded" },
        "components": {
            "eventLog": if log_ok { "ok" } else { "down" },
            "stateStore": state,
            "coldStore": cold,
        },
    }))
}
