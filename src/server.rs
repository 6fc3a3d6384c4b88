//! Process shape: one pinned glommio executor per configured core, joined by a channel
//! mesh, each accepting HTTP on the same port (SO_REUSEPORT) and owning its shard.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use exchange_io::http::{HyperIo, Prefixed};
use glommio::channels::channel_mesh::{MeshBuilder, Receivers};
use glommio::channels::local_channel::LocalSender;
use glommio::{LocalExecutorBuilder, Placement};

use crate::accounts::Accounts;
use crate::api::admission::{self, Admission, RESERVED_SLOTS};
use crate::api::error::ApiError;
use crate::api::service::{self, Service};
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::shard::protocol::{Message, Request};
use crate::shard::rpc::Rpc;
use crate::shard::log::LogRoom;
use crate::shard::projections::{Ledger, Projections};
use crate::shard::{dispatch, Core, Shard};
use crate::shard_map::ShardMap;

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
pub fn run(mut config: Config, mode: Mode) -> anyhow::Result<()> {
    let mut map = ShardMap::load(&config.shard_map)?;
    for symbol in &mut map.symbols {
        if let Some(secs) = config.funding_interval_secs {
            symbol.funding_interval_secs = secs;
        }
        if let Some(secs) = config.mark_basis_window_secs {
            symbol.mark_basis_window_secs = secs;
        }
        if let Some(secs) = config.index_max_age_secs {
            symbol.index_max_age_secs = secs;
        }
    }
    let map = Arc::new(map);
    let health_slot: Arc<std::sync::OnceLock<Arc<Health>>> = Arc::default();

    if config.redis.url.is_some() {
        tracing::info!("hot state: Redis, written behind the ledger");
    }
    let mut replication = None;
    let mut kafka_clients = None;
    if let Some(brokers) = &config.kafka.brokers {
        let topics = crate::wire::topics(&config.kafka.topic_prefix);
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        replication = Some(
            futures_lite::future::block_on(exchange_io::kafka::ensure_topics(brokers, &topics, &config.kafka.topic_settings()))
                .map_err(anyhow::Error::msg)?,
        );
        tracing::info!(brokers, "event log: Kafka");
        let tenancy = claim(brokers, &config, health_slot.clone())?;
        let timeout = Duration::from_millis(config.kafka.timeout_ms);
        kafka_clients = Some(crate::shard::log::Clients::new(brokers, timeout, tenancy).map_err(anyhow::Error::msg)?);
    }
    if config.admin_key.is_none() {
        tracing::warn!("EXCHANGE_ADMIN_KEY is not set: the admin API is disabled");
    }
    raise_memlock();
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("data dir {}", config.data_dir.display()))?;
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let (numbering, first_number) =
        crate::numbering::HighWater::open(&config.data_dir, clock).context("the numbering high-water mark in the data dir")?;
    let numbering = Arc::new(numbering);
    if config.signing_secret.is_none() {
        config.signing_secret = Some(kept_secret(&config.data_dir).context("the signing secret in the data dir")?);
    }
    let cores = config.shard_cores();
    let shards = cores.len();
    let config = Arc::new(config);
    let metrics = Metrics::new();
    let initial = if config.redis.url.is_some() { crate::shard::projections::hot::STALE } else { crate::shard::projections::hot::DISABLED };
    let index_max_age = map.symbols.iter().map(|s| s.index_max_age_secs).min().unwrap_or(u64::MAX);
    let health = Arc::new(Health::new(shards, initial, map.symbols.len(), index_max_age));
    let _ = health_slot.set(health.clone());
    if let Some(r) = replication {
        health.replication_wanted.store(r.wanted, Ordering::Release);
        health.replication_actual.store(r.actual, Ordering::Release);
    }
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
            Some((
                crate::cold::reader::ColdReader::start(url.clone())?,
                crate::cold::checkpoint::Checkpoints::start(url.clone(), prefix.clone(), map.clone())?,
            ))
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
    let mesh = MeshBuilder::<crate::shard::rpc::Batch, _>::full(shards, 1024);
    // A start that stops making progress (a broker that accepts connections but never
    // answers, a wakeup lost in the executor) ends the process with an error that says
    // where, instead of leaving a silent process that never serves.
    {
        let health = health.clone();
        let spawned = exchange_io::offcore::spawn("start-watchdog", move || {
            if let Some(at) = health.watch_start(START_PATIENCE) {
                tracing::error!(stuck = at, secs = START_PATIENCE.as_secs(), "the start made no progress: stopping");
                std::process::exit(3);
            }
        });
        spawned.context("starting the start-up watchdog")?;
    }
    let admission = Admission::new(config.limits.stream_per_address, config.limits.max_connections_per_core, shards);
    let listen_keys = std::sync::Arc::new(crate::api::binance::stream::ListenKeys::default());
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
        let numbering = (numbering.clone(), first_number);
        let kafka_clients = kafka_clients.clone();
        let admission = admission.clone();
        let listen_keys = listen_keys.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("shard-{id}"))
            .io_memory(config.io_memory_kib * 1024)
            .spin_before_park(Duration::from_micros(config.spin_micros))
            .ring_depth(config.ring_depth)
            .spawn(move || async move {
                let start = Startup { id, shards, map, config, metrics, health: health.clone(), redis, cold, sync, numbering, kafka_clients, admission, listen_keys, mode };
                let result = shard_main(start, mesh).await;
                match result {
                    // The first shard to fail is the cause; the others then stop at their
                    // start barrier, or finish serving, and are not the story.
                    Err(e) if !health.stopping.swap(true, Ordering::AcqRel) => {
                        tracing::error!(shard = id, error = format!("{e:#}"), "shard failed");
                        Err(Some(e))
                    }
                    Err(_) => Err(None),
                    Ok(()) => Ok(()),
                }
            })
            .map_err(|e| anyhow::anyhow!("starting the executor for shard {id} on core {core} (see README: memlock): {e}"))?;
        handles.push(handle);
    }
    let (mut cause, mut failed) = (None, false);
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed = true;
                cause = cause.or(e);
            }
            Err(e) => cause = cause.or(Some(anyhow::anyhow!("executor: {e}"))),
        }
    }
    if health.superseded.load(Ordering::Acquire) {
        return Err(Superseded.into());
    }
    match cause {
        Some(e) => Err(e),
        None if failed => Err(anyhow::anyhow!("stopped (by a signal) before every shard started")),
        None => Ok(()),
    }
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
    /// Cold storage's reader (order history) and checkpoint sink.
    cold: Option<(crate::cold::reader::ColdReader, crate::cold::checkpoint::Checkpoints)>,
    sync: Option<crate::cold::sync::SyncStore>,
    /// The high-water mark of numbers that never repeat, and the first this run uses.
    numbering: (Arc<crate::numbering::HighWater>, u64),
    /// Kafka: the process's clients.
    kafka_clients: Option<crate::shard::log::Clients>,
    /// Who may hold a connection slot (process-wide).
    admission: std::sync::Arc<Admission>,
    /// The Binance dialect's listen keys (process-wide).
    listen_keys: std::sync::Arc<crate::api::binance::stream::ListenKeys>,
    mode: Mode,
}

/// The process stopped because another one claimed the event log's topics (see
/// [`exchange_io::tenancy`]): restarting it would take them back from the newer one.
#[derive(Debug, thiserror::Error)]
#[error("another process claimed the event log's topics: this one stopped (a restart would take them back)")]
pub struct Superseded;

/// Claims the event log's topics for this process (see [`exchange_io::tenancy`]). When
/// a newer process claims them, this one refuses every write, says so in `/health`
/// and stops.
fn claim(brokers: &str, config: &Config, health: Arc<std::sync::OnceLock<Arc<Health>>>) -> anyhow::Result<Arc<exchange_io::tenancy::Tenancy>> {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let who = serde_json::json!({
        "eventType": "WriterClaimed",
        "host": host,
        "pid": std::process::id(),
        "httpAddr": config.http_addr.to_string(),
        "dataDir": config.data_dir.display().to_string(),
        "timestamp": crate::shard::core::now_ms(),
    });
    let topic = format!("{}{}", config.kafka.topic_prefix, crate::wire::CLAIMS_TOPIC);
    let lost = move |_: &str| {
        if let Some(health) = health.get() {
            health.superseded.store(true, Ordering::Release);
            health.stopping.store(true, Ordering::Release);
        }
    };
    let tenancy = exchange_io::tenancy::Tenancy::claim(brokers, &topic, who.to_string().as_bytes(), Duration::from_secs(30), lost)
        .map_err(anyhow::Error::msg)
        .context("claiming the event log's topics")?;
    tracing::info!(topic, offset = tenancy.claim_offset, "claimed the event log's topics");
    Ok(tenancy)
}

/// What the process is started for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Serve,
    /// Replay the logs, write the hot state to Redis, exit.
    RebuildState,
}

async fn shard_main(start: Startup, mesh: MeshBuilder<crate::shard::rpc::Batch, glommio::channels::channel_mesh::Full>) -> anyhow::Result<()> {
    let Startup { id, shards, map, config, metrics, health, redis, cold, sync, numbering: (numbering, first_number), kafka_clients, admission, listen_keys, mode } = start;
    health.starting(id, "joining the channel mesh");
    let (senders, receivers) = mesh.join().await.map_err(|e| anyhow::anyhow!("mesh join failed: {e}"))?;
    let kafka = match (&config.kafka.brokers, kafka_clients) {
        (Some(brokers), Some(clients)) => Some(crate::shard::log::KafkaBackend::start(
            brokers,
            config.kafka.partitions,
            &config.kafka.topic_prefix,
            Duration::from_millis(config.kafka.timeout_ms),
            clients,
        )),
        _ => None,
    };
    let (rpc, flushes) = Rpc::new(id, shards);
    let sync = sync.map(|s| Rc::new(s) as Rc<dyn crate::ports::SyncStore>);
    let core = Rc::new(Core::new((id, shards), map.clone(), config.clone(), rpc, metrics, health.clone(), sync));
    let checkpoints = cold.as_ref().map(|(_, c)| Arc::new(c.clone()) as Arc<dyn crate::ports::CheckpointSink>);
    let log = LogRoom::new(core.clone(), kafka, (numbering, first_number), checkpoints);
    let ledger: Ledger = Rc::new(RefCell::new(Box::new({
        let accounts = Accounts::new(config.rate_limit, config.max_open_orders, first_number)
            .with_position_limits(map.symbols.iter().map(crate::accounts::PositionLimit::of).collect());
        // Redis deletes the closed orders the ledger forgets.
        if redis.is_some() { accounts.collecting_forgotten() } else { accounts }
    })));
    let redis = redis.map(|bridge| crate::shard::projections::hot::RedisHot::new(bridge, crate::redis_state::Keys::new(&config.redis.prefix), health.clone(), id));
    let shard = Shard::new(log, Projections::new(core, ledger, redis));
    let work = listen_mesh(&shard, receivers);
    let own = shard.clone();
    let receive_own = move |batch| receive(&own, own.id, batch, &work);
    glommio::spawn_local(crate::shard::rpc::flush(shard.core.clone(), senders, flushes, shard.metrics.clone(), receive_own)).detach();
    health.starting(id, "replaying account partitions");
    crate::shard::accounts::recover_accounts(&shard.accounts).await?;
    health.starting(id, "waiting for the other shards' accounts");
    health.barrier(1, shards).await.map_err(anyhow::Error::msg)?;
    health.starting(id, "replaying symbols");
    crate::shard::symbols::recover::recover_symbols(&shard.symbols).await?;
    health.starting(id, "waiting for the other shards' symbols");
    health.barrier(2, shards).await.map_err(anyhow::Error::msg)?;
    if mode == Mode::RebuildState {
        return rebuild_state(&shard).await;
    }
    if shard.out.redis.is_some() {
        glommio::spawn_local(crate::shard::projections::hot::write_behind(shard.out.clone())).detach();
        glommio::spawn_local(crate::shard::projections::hot::watch(shard.out.clone())).detach();
    } else {
        glommio::spawn_local(crate::shard::projections::hot::check_periodically(shard.out.clone())).detach();
    }
    glommio::spawn_local(crate::shard::symbols::funding::clock(shard.symbols.clone())).detach();
    glommio::spawn_local(crate::shard::symbols::deadlines::clock(shard.symbols.clone())).detach();
    glommio::spawn_local(crate::shard::symbols::triggers::placer(shard.symbols.clone())).detach();
    let history = cold.map(|(reader, _)| reader);
    let hub = crate::api::stream::Hub::new(&shard, listen_keys.clone());
    crate::shard::projections::feed::install(&shard.out, Rc::new(crate::api::stream::HubFeed(hub.clone())));
    serve(Rc::new(Service { shard, history, hub: Some(hub), admission, listen_keys })).await
}

/// `exchange rebuild-state`: the logs are replayed (above); write every user to Redis.
async fn rebuild_state(shard: &Rc<Shard>) -> anyhow::Result<()> {
    if shard.out.redis.is_none() {
        anyhow::bail!("rebuild-state needs EXCHANGE_REDIS_URL");
    }
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        match crate::shard::projections::hot::rebuild(&shard.out).await {
            Ok(users) => {
                tracing::info!(shard = shard.id, users, ms = started.elapsed().as_millis() as u64, "hot state written");
                crate::shard::projections::hot::mark_clean(&shard.out).await;
                return Ok(());
            }
            Err(e) if std::time::Instant::now() > deadline => anyhow::bail!("rebuilding the hot state: {e}"),
            Err(_) => glommio::timer::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A request that waits for something (the log, another core): who asked, the id to
/// answer (none for one told), the request.
type Waiting = (usize, Option<u64>, Request);

/// One task per peer receives its batches ([`receive`]; this core's own batch is handed
/// to it by the flusher); one task runs every request among them that waits
/// ([`run_waiting`]), reached through what this returns. None is spawned per request.
fn listen_mesh(shard: &Rc<Shard>, mut receivers: Receivers<crate::shard::rpc::Batch>) -> Rc<LocalSender<Vec<Waiting>>> {
    let (work, todo) = glommio::channels::local_channel::new_unbounded();
    glommio::spawn_local(run_waiting(shard.clone(), todo)).detach();
    let work = Rc::new(work);
    for (peer, rx) in receivers.streams() {
        let (shard, work) = (shard.clone(), work.clone());
        glommio::spawn_local(async move {
            // One poll a wakeup: a shared channel keeps the waker of every poll that
            // found it empty until its next message.
            while let Some(batch) = rx.recv().await {
                receive(&shard, peer, batch, &work);
            }
        })
        .detach();
    }
    work
}

/// One batch from `peer`, in order: replies complete waiting callers; results and risk
/// steps are answered at once (`dispatch::answer_now`), so they apply in arrival order,
/// their replies joining this core's next batch back; the requests that wait go, as one
/// list, to [`run_waiting`].
fn receive(shard: &Rc<Shard>, peer: usize, batch: crate::shard::rpc::Batch, work: &LocalSender<Vec<Waiting>>) {
    let mut waiting = Vec::new();
    for message in batch {
        let (from, id, body) = match message {
            Message::Reply { id, body } => {
                shard.rpc.complete(id, body);
                continue;
            }
            Message::Notice(notice) => {
                crate::shard::projections::feed::delivered(&shard.out, notice);
                continue;
            }
            // Results, which nobody waits for.
            Message::Tell(body) => (peer, None, body),
            Message::Request { from, id, body } => (from, Some(id), body),
        };
        match dispatch::answer_now(shard, &body) {
            Some(reply) => {
                if let Some(id) = id {
                    shard.rpc.reply(from, id, reply);
                }
            }
            None => waiting.push((from, id, body)),
        }
    }
    if !waiting.is_empty() {
        // Unbounded and local: fails only once the runner is gone (shutting down).
        let _ = work.try_send(waiting);
    }
}

/// The one task of a core that runs the requests that wait: each is started as its
/// batch comes in and answered as soon as it is done. They belong to this task, not to
/// a connection, so a client that goes away stops none of them half-way (between a
/// margin lock and its log write or release).
async fn run_waiting(shard: Rc<Shard>, todo: glommio::channels::local_channel::LocalReceiver<Vec<Waiting>>) {
    let mut running = futures_util::stream::FuturesUnordered::new();
    loop {
        let more = if running.is_empty() {
            todo.recv().await.map(Some)
        } else {
            futures_lite::future::or(async { todo.recv().await.map(Some) }, async {
                futures_util::StreamExt::next(&mut running).await;
                Some(None)
            })
            .await
        };
        match more {
            None => break,
            Some(None) => {}
            Some(Some(list)) => {
                for (from, id, body) in list {
                    running.push(answer_later(shard.clone(), from, id, body));
                }
            }
        }
    }
}

/// A request's answer once it is ready, sent to `from` if it asked for one (`id`).
async fn answer_later(shard: Rc<Shard>, from: usize, id: Option<u64>, body: Request) {
    let reply = dispatch::run(shard.clone(), from, body).await;
    if let Some(id) = id {
        shard.rpc.reply(from, id, reply);
    }
}

/// How long a start may go without any shard taking a step (a partition or symbol read,
/// a phase done) before it is given up with an error.
const START_PATIENCE: Duration = Duration::from_secs(120);

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn serve(service: Rc<Service>) -> anyhow::Result<()> {
    let shard = service.shard.clone();
    let listener = glommio::net::TcpListener::bind(shard.config.http_addr)
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", shard.config.http_addr))?;
    tracing::info!(shard = shard.id, addr = %shard.config.http_addr, "serving");
    shard.health.starting(shard.id, "serving");
    let connections = Rc::new(Cell::new(0usize));
    // Connections being told that every slot is taken.
    let refusing = Rc::new(Cell::new(0usize));
    // One accept stays pending across the stop checks: dropping a pending accept can
    // lose a connection the kernel completed at that instant (it stays established,
    // its request unread, until the client gives up), so only a finished accept is
    // replaced, and the timer alone is raced against it.
    let mut accept = Box::pin(listener.accept());
    let mut backoff = ACCEPT_BACKOFF_MIN;
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
            Ok(s) => {
                backoff = ACCEPT_BACKOFF_MIN;
                s
            }
            Err(e) => {
                // Out of descriptors or memory: retrying at once would spin the core
                // that serves the open connections. Back off, doubling up to a second.
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let cap = shard.config.limits.max_connections_per_core;
        if connections.get() >= cap + RESERVED_SLOTS {
            // Full, the reserve too: told so at once. Past twice the reserve (a flood),
            // closed at once.
            if refusing.get() < RESERVED_SLOTS {
                refusing.set(refusing.get() + 1);
                let refusing = refusing.clone();
                glommio::spawn_local(async move {
                    let full = ApiError::Unavailable("connections are full".into());
                    answer_and_close(stream, &admission::refusal(&full)).await;
                    refusing.set(refusing.get() - 1);
                })
                .detach();
            }
            continue;
        }
        let _ = stream.set_nodelay(true);
        let reserve = connections.get() >= cap;
        connections.set(connections.get() + 1);
        let (service, connections) = (service.clone(), connections.clone());
        glommio::spawn_local(async move {
            match connection(service.clone(), stream, reserve).await {
                None => connections.set(connections.get() - 1),
                // The WebSocket session in a task of its own, which holds the slot from
                // now: this one ends, and the HTTP side's memory (hyper's connection
                // state is most of this task's) goes with it, not kept for the session.
                Some((socket, upgrade)) => drop(
                    glommio::spawn_local(async move {
                        crate::api::stream::serve(service, socket, upgrade).await;
                        connections.set(connections.get() - 1);
                    })
                    .detach(),
                ),
            }
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
    crate::shard::projections::hot::mark_clean(&shard.out).await;
    tracing::info!(shard = shard.id, "stopped");
    Ok(())
}

/// Serves one connection. `reserve`: it came past the connection cap, and may only ask
/// for `/health` or `/metrics` (see [`admission`]).
/// Serves a connection over HTTP until it ends (`None`) or a request was answered with a
/// stream upgrade: then the socket, with the bytes hyper read past that request in front,
/// and the upgrade to carry out.
async fn connection(service: Rc<Service>, mut stream: glommio::net::TcpStream, reserve: bool) -> Option<(Prefixed<glommio::net::TcpStream>, crate::api::stream::Upgrade)> {
    let limits = &service.shard.config.limits;
    let header_timeout = Duration::from_secs(limits.header_timeout_secs.max(1));
    let mut head = Vec::new();
    if reserve {
        // A reserved slot is held for one request, not for an idle client.
        head = whole_head(&mut stream, head, header_timeout).await;
        let monitoring = [&b"GET /health "[..], b"GET /health?", b"GET /metrics ", b"GET /metrics?"];
        if !monitoring.iter().any(|m| head.starts_with(m)) {
            let full = ApiError::Unavailable("connections are full; only /health and /metrics are served".into());
            answer_and_close(stream, &admission::refusal(&full)).await;
            return None;
        }
    }
    let peer = stream.peer_addr().map(|a| a.ip()).unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let io = HyperIo::new(Prefixed::new(head, stream));
    let activity = io.activity();
    let idle = Duration::from_secs(limits.idle_timeout_secs.max(1));
    let here = Rc::new(service::Connection { peer, upgrade: RefCell::new(None) });
    let hyper_service = service::hyper_service(service.clone(), activity.clone(), here.clone());
    // Served until it ends or a request is answered 101 (a stream upgrade, on any request
    // of the connection): then hyper hands the socket back, with what it read past that
    // request, and the WebSocket session takes it over.
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(!reserve)
        .max_buf_size(16 * 1024)
        .serve_connection(io, hyper_service)
        .without_shutdown();
    // Closes connections that stay silent (idle keep-alive) or send a request's headers
    // too slowly (slowloris). Request bodies have their own deadline in `answer`.
    let watchdog = async {
        loop {
            glommio::timer::sleep(Duration::from_millis(500)).await;
            let slow = activity.request_started.get().is_some_and(|t| t.elapsed() > header_timeout);
            if slow || activity.last_read.get().elapsed() > idle {
                return None;
            }
        }
    };
    let served = futures_lite::future::or(async { conn.await.ok() }, watchdog).await;
    let (Some(parts), Some(upgrade)) = (served, here.upgrade.take()) else { return None };
    let (unread, socket) = parts.io.into_inner().into_parts();
    // A small kernel send buffer: what a slow consumer has not read stays in its queue,
    // where the bound (and the cut-off) is, not in megabytes of socket buffer per
    // connection.
    set_send_buffer(&socket, STREAM_SEND_BUFFER);
    let mut ahead = parts.read_buf.to_vec();
    ahead.extend_from_slice(&unread);
    Some((Prefixed::new(ahead, socket), upgrade))
}

/// Appends what one read brings within `patience`; `false` if it brought nothing (the
/// peer closed, failed or was too slow).
async fn read_more(stream: &mut glommio::net::TcpStream, head: &mut Vec<u8>, buf: &mut [u8], patience: Duration) -> bool {
    use futures_lite::AsyncReadExt;
    let read = futures_lite::future::or(async { Some(stream.read(buf).await) }, async {
        glommio::timer::sleep(patience).await;
        None
    })
    .await;
    match read {
        Some(Ok(n)) if n > 0 => {
            head.extend_from_slice(&buf[..n]);
            true
        }
        _ => false,
    }
}

/// The request's head read whole (up to its blank line, at most [`HEAD_LIMIT`] bytes)
/// within `patience`, so that an answer refusing it is not lost to a reset: a socket
/// closed with unread bytes resets the connection.
async fn whole_head(stream: &mut glommio::net::TcpStream, mut head: Vec<u8>, patience: Duration) -> Vec<u8> {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_LIMIT {
        if !read_more(stream, &mut head, &mut buf, patience.saturating_sub(started.elapsed())).await {
            break;
        }
    }
    head
}

/// Refusals read at most this much of a request before answering.
const HEAD_LIMIT: usize = 16 * 1024;

/// Writes a whole answer (within a second: a peer that does not read gets no more) and
/// closes the connection.
async fn answer_and_close(mut stream: glommio::net::TcpStream, answer: &[u8]) {
    use futures_lite::AsyncWriteExt;
    let write = async {
        let _ = stream.write_all(answer).await;
        let _ = stream.flush().await;
        let _ = stream.close().await;
    };
    futures_lite::future::or(write, glommio::timer::sleep(Duration::from_secs(1))).await;
}

/// The kernel send buffer of a stream (WebSocket) connection.
const STREAM_SEND_BUFFER: libc::c_int = 64 * 1024;

fn set_send_buffer(stream: &glommio::net::TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and an int-sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_SNDBUF not set");
    }
}

/// The signing secret kept in `dir` (`signing.secret`), made (32 random bytes, hex) the
/// first time; readable by the owner only.
///
/// # Errors
/// The file cannot be read or written, or there is no randomness.
pub fn kept_secret(dir: &std::path::Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("signing.secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let secret = hex::encode(bytes);
    let fresh = dir.join("signing.secret.new");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&fresh)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&fresh, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_secret_is_made_once() {
        let dir = std::env::temp_dir().join(format!("signing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = kept_secret(&dir).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(kept_secret(&dir).unwrap(), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
