//! Prometheus metrics, named `exchange_<thing>_<unit>`, labelled by shard.
//!
//! One registry for the process; each shard takes its own handles (plain atomics
//! underneath) at start and is their only writer, so recording costs no contention.
//! `/metrics` on any shard renders every shard's series.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

/// Why the server closed a stream connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    orders: Family<ShardLabel, Counter>,
    ack: Family<ShardLabel, Histogram>,
    fsync: Family<ShardLabel, Histogram>,
    queue: Family<ShardLabel, Gauge>,
    batches: Family<ShardLabel, Histogram>,
    lingering: Family<ShardLabel, Gauge>,
    requests: Family<ShardLabel, Counter>,
    hot_state: Family<ShardLabel, Gauge>,
    rebuilds: Family<ShardLabel, Counter>,
    liquidations: Family<ShardLabel, Counter>,
    liquidations_due: Family<ShardLabel, Gauge>,
    stream_delay: Family<ShardLabel, Histogram>,
    mesh_messages: Family<ShardLabel, Counter>,
    mesh_batches: Family<ShardLabel, Counter>,
    /// How far cold storage trails the event log, in ms (0 when caught up).
    pub cold_lag_ms: Gauge,
    /// Records of the event log stored in cold storage.
    pub cold_records: Counter,
    pub consistency_checks: Counter,
    /// Users whose hot state differed from the log and was rewritten.
    pub consistency_repairs: Counter,
    /// Stream (WebSocket) connections open now, on all cores.
    pub streams_open: Gauge,
    /// Stream connections opened since start.
    pub streams_opened: Counter,
    /// Stream connections the server closed, by reason: `behind` (past its bound),
    /// `stalled` (a write that did not finish within its deadline), `silent` (no
    /// answer to pings), `overloaded` (messages for its core were dropped).
    pub streams_cut: Family<ReasonLabel, Counter>,
    /// Stream messages written to their sockets, and the socket writes that carried them
    /// (a connection's messages of one tick, from all its channels, go out in one write).
    pub stream_messages: Counter,
    pub stream_writes: Counter,
}

/// One shard's handles.
#[derive(Clone)]
pub struct ShardMetrics {
    pub orders: Counter,
    pub ack_seconds: Histogram,
    pub fsync_seconds: Histogram,
    pub queue_depth: Gauge,
    /// Commands per batch a stream sent to its log (a batch is one record on Kafka).
    pub batch_commands: Histogram,
    /// The shard's streams of commands that gather their commands before sending them to
    /// Kafka now (busy ones; see `exchange_io::kafka::Commands`).
    pub lingering_streams: Gauge,
    pub requests: Counter,
    /// Complete rewrites of the shard's hot state into Redis.
    pub hot_rebuilds: Counter,
    /// Liquidations ended (the position closed, or as much of it as could be).
    pub liquidations: Counter,
    /// Due positions a liquidation pass has still to take, over the shard's symbols.
    pub liquidations_due: Gauge,
    /// The server's part of stream delivery: from a result reaching the core's stream
    /// side to the completion of the socket write that carries it, per write (its oldest
    /// message).
    pub stream_delay_seconds: Histogram,
    /// Messages the shard sent to other cores (requests, results, replies, notices), and
    /// the batches that carried them (one a destination core a turn).
    pub mesh_messages: Counter,
    pub mesh_batches: Counter,
}

/// 1 .. 4,096 commands.
fn batch_sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

fn latency() -> Histogram {
    // 10 µs .. ~5 s
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

/// 100 µs .. ~2.5 s, each bucket 1.5x the last: the stream delay's targets are tens of ms.
fn stream_delay() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 1.5, 26))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let orders = Family::<ShardLabel, Counter>::default();
        let ack = Family::<ShardLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let fsync = Family::<ShardLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let queue = Family::<ShardLabel, Gauge>::default();
        let requests = Family::<ShardLabel, Counter>::default();
        registry.register("exchange_orders", "Orders acknowledged", orders.clone());
        registry.register("exchange_order_ack_seconds", "Time from request to order acknowledgement", ack.clone());
        registry.register("exchange_log_fsync_seconds", "Event log group-commit (write + fdatasync) time", fsync.clone());
        registry.register("exchange_shard_queue_depth", "Commands waiting for the log on the shard", queue.clone());
        let batches = Family::<ShardLabel, Histogram>::new_with_constructor(batch_sizes as fn() -> Histogram);
        registry.register("exchange_log_batch_commands", "Commands per batch a stream sent to the event log (one record on Kafka)", batches.clone());
        let lingering = Family::<ShardLabel, Gauge>::default();
        registry.register(
            "exchange_shard_lingering_streams",
            "Streams of commands on the shard that gather their commands a moment before sending them to Kafka (busy ones)",
            lingering.clone(),
        );
        registry.register("exchange_http_requests", "HTTP requests served", requests.clone());
        let hot_state = Family::<ShardLabel, Gauge>::default();
        let rebuilds = Family::<ShardLabel, Counter>::default();
        registry.register(
            "exchange_hot_state",
            "State of the shard's hot state: 0 in-process, 1 Redis lost, 2 being rebuilt, 3 Redis ready",
            hot_state.clone(),
        );
        registry.register("exchange_hot_state_rebuilds", "Complete rewrites of the shard's hot state into Redis", rebuilds.clone());
        let liquidations = Family::<ShardLabel, Counter>::default();
        let liquidations_due = Family::<ShardLabel, Gauge>::default();
        registry.register("exchange_liquidations", "Liquidations ended (closed, or as much as could be)", liquidations.clone());
        registry.register("exchange_liquidations_due", "Due positions a liquidation pass has still to take", liquidations_due.clone());
        let cold_lag_ms = Gauge::default();
        let cold_records = Counter::default();
        registry.register(
            "exchange_cold_store_lag_milliseconds",
            "Age of the newest record in the last batch stored in PostgreSQL when it committed; 0 when caught up",
            cold_lag_ms.clone(),
        );
        registry.register("exchange_cold_store_records", "Event log records stored in PostgreSQL", cold_records.clone());
        let consistency_checks = Counter::default();
        let consistency_repairs = Counter::default();
        registry.register("exchange_consistency_checks", "Consistency checks run (per shard)", consistency_checks.clone());
        registry.register(
            "exchange_consistency_repairs",
            "Users whose hot state differed from the log and was rewritten",
            consistency_repairs.clone(),
        );
        let streams_open = Gauge::default();
        let streams_opened = Counter::default();
        let streams_cut = Family::<ReasonLabel, Counter>::default();
        registry.register("exchange_stream_connections", "Stream (WebSocket) connections open now", streams_open.clone());
        registry.register("exchange_stream_connections_opened", "Stream connections opened since start", streams_opened.clone());
        registry.register(
            "exchange_stream_connections_cut",
            "Stream connections closed by the server: behind (past its bound), stalled (a write past its deadline), silent (no answer to pings), overloaded (messages for its core dropped)",
            streams_cut.clone(),
        );
        let stream_messages = Counter::default();
        let stream_writes = Counter::default();
        registry.register("exchange_stream_messages", "Stream messages written to their sockets", stream_messages.clone());
        registry.register("exchange_stream_writes", "Socket writes of stream connections", stream_writes.clone());
        let stream_delay = Family::<ShardLabel, Histogram>::new_with_constructor(stream_delay as fn() -> Histogram);
        registry.register(
            "exchange_stream_delay_seconds",
            "Per stream write, time from its oldest message's result reaching the core's stream side to the write's completion",
            stream_delay.clone(),
        );
        let mesh_messages = Family::<ShardLabel, Counter>::default();
        let mesh_batches = Family::<ShardLabel, Counter>::default();
        registry.register("exchange_mesh_messages", "Messages the shard sent to other cores: requests, results, replies, notices", mesh_messages.clone());
        registry.register("exchange_mesh_batches", "Batches that carried the shard's messages to other cores, one a destination core a turn", mesh_batches.clone());
        Self {
            registry: Arc::new(registry),
            orders,
            ack,
            fsync,
            queue,
            batches,
            lingering,
            requests,
            hot_state,
            rebuilds,
            liquidations,
            liquidations_due,
            stream_delay,
            mesh_messages,
            mesh_batches,
            cold_lag_ms,
            cold_records,
            consistency_checks,
            consistency_repairs,
            streams_open,
            streams_opened,
            streams_cut,
            stream_messages,
            stream_writes,
        }
    }

    pub fn shard(&self, shard: usize) -> ShardMetrics {
        let label = ShardLabel { shard: shard.to_string() };
        ShardMetrics {
            orders: self.orders.get_or_create(&label).clone(),
            ack_seconds: self.ack.get_or_create(&label).clone(),
            fsync_seconds: self.fsync.get_or_create(&label).clone(),
            queue_depth: self.queue.get_or_create(&label).clone(),
            batch_commands: self.batches.get_or_create(&label).clone(),
            lingering_streams: self.lingering.get_or_create(&label).clone(),
            requests: self.requests.get_or_create(&label).clone(),
            hot_rebuilds: self.rebuilds.get_or_create(&label).clone(),
            liquidations: self.liquidations.get_or_create(&label).clone(),
            liquidations_due: self.liquidations_due.get_or_create(&label).clone(),
            stream_delay_seconds: self.stream_delay.get_or_create(&label).clone(),
            mesh_messages: self.mesh_messages.get_or_create(&label).clone(),
            mesh_batches: self.mesh_batches.get_or_create(&label).clone(),
        }
    }

    /// Records the hot state of each shard (read at render time: it changes from other
    /// threads).
    pub fn set_hot_states(&self, states: impl Iterator<Item = u8>) {
        for (shard, state) in states.enumerate() {
            self.hot_state.get_or_create(&ShardLabel { shard: shard.to_string() }).set(i64::from(state));
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
