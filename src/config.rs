//! Configuration: an optional TOML file (`--config PATH`), then environment variables.
//!
//! Every key can be set in the file; the environment overrides it. The variable names in
//! the table below are an interface (deployment units and outside checks use them) and
//! do not change.
//!
//! | variable | key | default |
//! |---|---|---|
//! | `EXCHANGE_HTTP_ADDR` | `http_addr` | `127.0.0.1:8080` |
//! | `EXCHANGE_DATA_DIR` | `data_dir` | `./data` |
//! | `EXCHANGE_ADMIN_KEY` | `admin_key` | none: admin API disabled |
//! | `EXCHANGE_SIGNING_SECRET` | `signing_secret` | a random one, kept in `<data_dir>/signing.secret` (derives every key's Binance API secret) |
//! | `EXCHANGE_CORES` | `cores` | all online cores |
//! | `EXCHANGE_SHARD_MAP` | `shard_map` | `shards/default.toml` |
//! | `EXCHANGE_KAFKA_BROKERS` | `kafka.brokers` | unset: embedded journal |
//! | `EXCHANGE_KAFKA_PARTITIONS` | `kafka.partitions` | `8` (per topic created) |
//! | `EXCHANGE_KAFKA_TIMEOUT_MS` | `kafka.timeout_ms` | `2000` (then 503) |
//! | `EXCHANGE_KAFKA_TOPIC_PREFIX` | `kafka.topic_prefix` | empty |
//! | `EXCHANGE_KAFKA_REPLICATION_FACTOR` | `kafka.replication_factor` | `3` (fewer brokers: all of them, with a warning) |
//! | `EXCHANGE_KAFKA_MIN_INSYNC_REPLICAS` | `kafka.min_insync_replicas` | `2` (at most the replication factor) |
//! | `EXCHANGE_KAFKA_RETENTION_HOURS` | `kafka.retention_hours` | `168` (7 days) |
//! | `EXCHANGE_REDIS_URL` | `redis.url` | unset: in-process hot state (a cluster is detected) |
//! | `EXCHANGE_REDIS_TIMEOUT_MS` | `redis.timeout_ms` | `1000` (then lost, and rewritten) |
//! | `EXCHANGE_REDIS_PREFIX` | `redis.prefix` | empty (prepended to every key) |
//! | `EXCHANGE_POSTGRES_URL` | `postgres.url` | unset: no cold storage |
//! | `EXCHANGE_PERSISTENCE` | `persistence` | `async`; `sync`: the baseline (needs PostgreSQL) |
//! | `EXCHANGE_SYNC_CONNECTIONS` | `sync_connections` | `64` (the baseline's connections) |
//! | `EXCHANGE_CHECK_INTERVAL_SECS` | `check_interval_secs` | `300` |
//! | `EXCHANGE_RATE_LIMIT` | `rate_limit` | `100` (orders/s per user; 0 = off) |
//! | `EXCHANGE_MAX_OPEN_ORDERS` | `max_open_orders` | `1000` (per user and symbol) |
//! | `EXCHANGE_IO_MEMORY_KIB` | `io_memory_kib` | `512` (locked memory per core) |
//! | `EXCHANGE_SNAPSHOT_EVERY` | `snapshot_every` | `100000` (commands per stream) |
//! | `EXCHANGE_SPIN_MICROS` | `spin_micros` | `0` (busy-poll before sleeping) |
//! | `EXCHANGE_RING_DEPTH` | `ring_depth` | `128` (io_uring entries per ring, a power of two) |
//! | `EXCHANGE_FUNDING_INTERVAL_SECS` | `funding_interval_secs` | unset: each symbol's (shard map; 28800) |
//! | `EXCHANGE_INDEX_MAX_AGE_SECS` | `index_max_age_secs` | `60` (an older index pauses liquidation and funding) |
//! | `EXCHANGE_MARK_BASIS_WINDOW_SECS` | `mark_basis_window_secs` | unset: each symbol's (shard map; 300) |
//! | `EXCHANGE_MAX_CONNECTIONS` | `limits.max_connections_per_core` | `10000` |
//! | `EXCHANGE_IDLE_TIMEOUT_SECS` | `limits.idle_timeout_secs` | `60` |
//! | `EXCHANGE_HEADER_TIMEOUT_SECS` | `limits.header_timeout_secs` | `10` |
//! | `EXCHANGE_STREAM_QUEUE_BYTES` | `limits.stream_queue_bytes` | `4194304` (a WebSocket's unsent bytes before it is cut off) |
//! | `EXCHANGE_STREAM_PING_SECS` | `limits.stream_ping_secs` | `15` (idle WebSockets pinged; silent for twice that: closed) |
//! | `EXCHANGE_STREAM_PER_ADDRESS` | `limits.stream_per_address` | `50` (stream connections one client address may hold, on all cores together) |
//! | `EXCHANGE_STREAM_WRITE_TIMEOUT_MS` | `limits.stream_write_timeout_ms` | `2000` (a WebSocket write the peer has not taken by then: closed as not reading) |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_key: Option<String>,
    /// What every key's API secret for Binance-style signing is derived from
    /// (`accounts::secret::secret_of`); unset: made once and kept in the data dir.
    pub signing_secret: Option<String>,
    pub cores: Option<Vec<usize>>,
    pub shard_map: PathBuf,
    pub kafka: Kafka,
    pub redis: Redis,
    pub postgres: Postgres,
    pub check_interval_secs: u64,
    pub rate_limit: u32,
    /// Open orders allowed per user and symbol.
    pub max_open_orders: u32,
    pub io_memory_kib: usize,
    pub snapshot_every: u64,
    /// Where an order waits before its answer (see [`Persistence`]).
    pub persistence: Persistence,
    /// PostgreSQL connections of the synchronous baseline.
    pub sync_connections: usize,
    /// How long an idle shard busy-polls before it sleeps: trades CPU for wake-up latency.
    pub spin_micros: u64,
    /// Entries of each io_uring ring of a core (glommio's default is 128).
    pub ring_depth: usize,
    /// Overrides every symbol's funding interval (seconds).
    pub funding_interval_secs: Option<u64>,
    /// An index price older than this (seconds) pauses liquidation and funding of its
    /// symbol and makes `/health` degraded; unset: the engine's default (60).
    pub index_max_age_secs: Option<u64>,
    /// Overrides every symbol's mark basis window (seconds).
    pub mark_basis_window_secs: Option<u64>,
    pub limits: Limits,
}

/// `async`: the event log is the truth and the databases are written behind it (the
/// exchange). `sync`: the design it replaces, kept as a baseline to measure against:
/// every order also waits for its own PostgreSQL transaction (`cold::sync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Persistence {
    #[default]
    Async,
    Sync,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Kafka {
    pub brokers: Option<String>,
    /// Partitions of each topic the exchange creates.
    pub partitions: i32,
    /// How long a command may wait for the broker before it is answered 503.
    pub timeout_ms: u64,
    /// Prepended to every topic name.
    pub topic_prefix: String,
    /// Copies of each partition of the topics the exchange creates.
    pub replication_factor: i32,
    /// `min.insync.replicas` of the topics the exchange creates.
    pub min_insync_replicas: i32,
    /// `retention.ms` of the topics the exchange creates, in hours (DESIGN.md: at least
    /// 7 days).
    pub retention_hours: i64,
}

impl Default for Kafka {
    fn default() -> Self {
        Self {
            brokers: None,
            partitions: 8,
            timeout_ms: 2_000,
            topic_prefix: String::new(),
            replication_factor: 3,
            min_insync_replicas: 2,
            retention_hours: 168,
        }
    }
}

impl Kafka {
    /// How the exchange creates its topics.
    pub fn topic_settings(&self) -> exchange_io::kafka::TopicSettings {
        exchange_io::kafka::TopicSettings {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            min_insync_replicas: self.min_insync_replicas,
            retention_ms: self.retention_hours.saturating_mul(3_600_000),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redis {
    /// A server, or any node of a cluster (several, comma-separated, are seeds).
    pub url: Option<String>,
    /// How long a call may wait before the hot state is taken as lost (503, rebuild).
    pub timeout_ms: u64,
    /// Prepended to every key, so several exchanges can share one Redis.
    pub prefix: String,
}

impl Default for Redis {
    fn default() -> Self {
        Self { url: None, timeout_ms: 1_000, prefix: String::new() }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Postgres {
    pub url: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_connections_per_core: usize,
    pub idle_timeout_secs: u64,
    pub header_timeout_secs: u64,
    pub max_json_depth: usize,
    pub stream_queue_bytes: usize,
    pub stream_ping_secs: u64,
    pub stream_per_address: usize,
    pub stream_write_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_connections_per_core: 10_000,
            idle_timeout_secs: 60,
            header_timeout_secs: 10,
            max_json_depth: 8,
            stream_queue_bytes: 4 * 1024 * 1024,
            stream_ping_secs: 15,
            stream_per_address: 50,
            stream_write_timeout_ms: 2000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            admin_key: None,
            signing_secret: None,
            cores: None,
            shard_map: PathBuf::from("shards/default.toml"),
            kafka: Kafka::default(),
            redis: Redis::default(),
            postgres: Postgres::default(),
            check_interval_secs: 300,
            rate_limit: 100,
            max_open_orders: 1_000,
            io_memory_kib: 512,
            snapshot_every: 100_000,
            persistence: Persistence::Async,
            sync_connections: 64,
            spin_micros: 0,
            ring_depth: 128,
            funding_interval_secs: None,
            index_max_age_secs: None,
            mark_basis_window_secs: None,
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// Reads the file (if any), then applies the environment.
    ///
    /// # Errors
    /// A message naming the file or variable at fault.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        fn parse<T: std::str::FromStr>(name: &str, v: &str) -> anyhow::Result<T>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}"))
        }
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        if let Some(v) = set("EXCHANGE_HTTP_ADDR") {
            self.http_addr = parse("EXCHANGE_HTTP_ADDR", &v)?;
        }
        if let Some(v) = set("EXCHANGE_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = set("EXCHANGE_ADMIN_KEY") {
            self.admin_key = Some(v);
        }
        if let Some(v) = set("EXCHANGE_SIGNING_SECRET") {
            self.signing_secret = Some(v);
        }
        // A blank key would be a key anyone can guess: it disables the admin API instead.
        self.admin_key = self.admin_key.take().filter(|k| !k.trim().is_empty());
        if let Some(v) = set("EXCHANGE_CORES") {
            let cores = v.split(',').map(|c| parse("EXCHANGE_CORES", c)).collect::<anyhow::Result<Vec<usize>>>()?;
            self.cores = Some(cores);
        }
        if let Some(v) = set("EXCHANGE_SHARD_MAP") {
            self.shard_map = PathBuf::from(v);
        }
        if let Some(v) = set("EXCHANGE_KAFKA_BROKERS") {
            self.kafka.brokers = Some(v);
        }
        if let Some(v) = set("EXCHANGE_KAFKA_PARTITIONS") {
            self.kafka.partitions = parse("EXCHANGE_KAFKA_PARTITIONS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_KAFKA_TOPIC_PREFIX") {
            self.kafka.topic_prefix = v;
        }
        if let Some(v) = set("EXCHANGE_KAFKA_REPLICATION_FACTOR") {
            self.kafka.replication_factor = parse("EXCHANGE_KAFKA_REPLICATION_FACTOR", &v)?;
        }
        if let Some(v) = set("EXCHANGE_KAFKA_MIN_INSYNC_REPLICAS") {
            self.kafka.min_insync_replicas = parse("EXCHANGE_KAFKA_MIN_INSYNC_REPLICAS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_KAFKA_RETENTION_HOURS") {
            self.kafka.retention_hours = parse("EXCHANGE_KAFKA_RETENTION_HOURS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_KAFKA_TIMEOUT_MS") {
            self.kafka.timeout_ms = parse("EXCHANGE_KAFKA_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_REDIS_URL") {
            self.redis.url = Some(v);
        }
        if let Some(v) = set("EXCHANGE_REDIS_TIMEOUT_MS") {
            self.redis.timeout_ms = parse("EXCHANGE_REDIS_TIMEOUT_MS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_REDIS_PREFIX") {
            self.redis.prefix = v;
        }
        if let Some(v) = set("EXCHANGE_POSTGRES_URL") {
            self.postgres.url = Some(v);
        }
        if let Some(v) = set("EXCHANGE_PERSISTENCE") {
            self.persistence = match v.trim() {
                "async" => Persistence::Async,
                "sync" => Persistence::Sync,
                other => anyhow::bail!("EXCHANGE_PERSISTENCE={other:?}: async or sync"),
            };
        }
        if let Some(v) = set("EXCHANGE_SYNC_CONNECTIONS") {
            self.sync_connections = parse("EXCHANGE_SYNC_CONNECTIONS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_CHECK_INTERVAL_SECS") {
            self.check_interval_secs = parse("EXCHANGE_CHECK_INTERVAL_SECS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_RATE_LIMIT") {
            self.rate_limit = parse("EXCHANGE_RATE_LIMIT", &v)?;
        }
        if let Some(v) = set("EXCHANGE_MAX_OPEN_ORDERS") {
            self.max_open_orders = parse("EXCHANGE_MAX_OPEN_ORDERS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_IO_MEMORY_KIB") {
            self.io_memory_kib = parse("EXCHANGE_IO_MEMORY_KIB", &v)?;
        }
        if let Some(v) = set("EXCHANGE_SNAPSHOT_EVERY") {
            self.snapshot_every = parse("EXCHANGE_SNAPSHOT_EVERY", &v)?;
        }
        if let Some(v) = set("EXCHANGE_SPIN_MICROS") {
            self.spin_micros = parse("EXCHANGE_SPIN_MICROS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_RING_DEPTH") {
            self.ring_depth = parse("EXCHANGE_RING_DEPTH", &v)?;
            anyhow::ensure!(
                self.ring_depth.is_power_of_two() && (8..=32_768).contains(&self.ring_depth),
                "EXCHANGE_RING_DEPTH must be a power of two from 8 to 32768"
            );
        }
        if let Some(v) = set("EXCHANGE_FUNDING_INTERVAL_SECS") {
            let secs: u64 = parse("EXCHANGE_FUNDING_INTERVAL_SECS", &v)?;
            anyhow::ensure!(secs > 0, "EXCHANGE_FUNDING_INTERVAL_SECS must be at least 1");
            self.funding_interval_secs = Some(secs);
        }
        if let Some(v) = set("EXCHANGE_INDEX_MAX_AGE_SECS") {
            let secs: u64 = parse("EXCHANGE_INDEX_MAX_AGE_SECS", &v)?;
            anyhow::ensure!(secs > 0, "EXCHANGE_INDEX_MAX_AGE_SECS must be at least 1");
            self.index_max_age_secs = Some(secs);
        }
        if let Some(v) = set("EXCHANGE_MARK_BASIS_WINDOW_SECS") {
            let secs: u64 = parse("EXCHANGE_MARK_BASIS_WINDOW_SECS", &v)?;
            anyhow::ensure!(secs > 0, "EXCHANGE_MARK_BASIS_WINDOW_SECS must be at least 1");
            self.mark_basis_window_secs = Some(secs);
        }
        if let Some(v) = set("EXCHANGE_MAX_CONNECTIONS") {
            self.limits.max_connections_per_core = parse("EXCHANGE_MAX_CONNECTIONS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_IDLE_TIMEOUT_SECS") {
            self.limits.idle_timeout_secs = parse("EXCHANGE_IDLE_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_HEADER_TIMEOUT_SECS") {
            self.limits.header_timeout_secs = parse("EXCHANGE_HEADER_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_STREAM_QUEUE_BYTES") {
            self.limits.stream_queue_bytes = parse("EXCHANGE_STREAM_QUEUE_BYTES", &v)?;
        }
        if let Some(v) = set("EXCHANGE_STREAM_PING_SECS") {
            let secs: u64 = parse("EXCHANGE_STREAM_PING_SECS", &v)?;
            anyhow::ensure!(secs > 0, "EXCHANGE_STREAM_PING_SECS must be at least 1");
            self.limits.stream_ping_secs = secs;
        }
        if let Some(v) = set("EXCHANGE_STREAM_PER_ADDRESS") {
            self.limits.stream_per_address = parse("EXCHANGE_STREAM_PER_ADDRESS", &v)?;
        }
        if let Some(v) = set("EXCHANGE_STREAM_WRITE_TIMEOUT_MS") {
            let ms: u64 = parse("EXCHANGE_STREAM_WRITE_TIMEOUT_MS", &v)?;
            anyhow::ensure!(ms > 0, "EXCHANGE_STREAM_WRITE_TIMEOUT_MS must be at least 1");
            self.limits.stream_write_timeout_ms = ms;
        }
        Ok(())
    }

    /// The cores to run shards on: configured, or every online core.
    pub fn shard_cores(&self) -> Vec<usize> {
        self.cores.clone().filter(|c| !c.is_empty()).unwrap_or_else(|| {
            (0..std::thread::available_parallelism().map_or(1, usize::from)).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file() {
        let mut c: Config = toml::from_str("rate_limit = 5\ndata_dir = \"/x\"\n[kafka]\nbrokers = \"k:1\"").unwrap();
        let env = |name: &str| match name {
            "EXCHANGE_RATE_LIMIT" => Some("0".to_owned()),
            "EXCHANGE_CORES" => Some("0,1".to_owned()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.rate_limit, 0);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.cores, Some(vec![0, 1]));
        assert_eq!(c.kafka.brokers.as_deref(), Some("k:1"));
        let bad = |name: &str| (name == "EXCHANGE_HTTP_ADDR").then(|| "nope".to_owned());
        let err = Config::default().apply_env(bad).unwrap_err().to_string();
        assert!(err.contains("EXCHANGE_HTTP_ADDR"), "{err}");
    }

    #[test]
    fn a_blank_admin_key_disables_the_admin_api() {
        let mut c: Config = toml::from_str("admin_key = \"   \"").unwrap();
        c.apply_env(|_| None).unwrap();
        assert_eq!(c.admin_key, None);
        let mut c = Config::default();
        c.apply_env(|name| (name == "EXCHANGE_ADMIN_KEY").then(|| "\t".to_owned())).unwrap();
        assert_eq!(c.admin_key, None);
        c.apply_env(|name| (name == "EXCHANGE_ADMIN_KEY").then(|| "k".to_owned())).unwrap();
        assert_eq!(c.admin_key.as_deref(), Some("k"));
    }
}
