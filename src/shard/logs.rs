//! Opening a stream's event log, embedded or Kafka, chosen once at start.
//!
//! A stream is a symbol's command log or an account partition's log. Embedded, each has
//! its own directory of segment files. In Kafka, symbol commands go to `orders.submitted`
//! keyed by symbol and account records to `accounts.adjusted` keyed by partition, each
//! in the partition Kafka's partitioner gives the key; a stream reads back only its key.

use anyhow::Context;
use exchange_io::journal::{recover, Journal};
use exchange_io::kafka::{self, KafkaLog, Producer};

use super::{Log, Shard};

pub const COMMANDS_TOPIC: &str = "orders.submitted";
pub const ACCOUNTS_TOPIC: &str = "accounts.adjusted";
pub const PLACED_TOPIC: &str = "orders.placed";
pub const CANCELLED_TOPIC: &str = "orders.cancelled";
pub const TRADES_TOPIC: &str = "trades.executed";
pub const TOPICS: [&str; 5] = [COMMANDS_TOPIC, PLACED_TOPIC, CANCELLED_TOPIC, TRADES_TOPIC, ACCOUNTS_TOPIC];

/// The Kafka connection of a shard.
pub struct KafkaBackend {
    pub brokers: String,
    pub partitions: i32,
    pub timeout: std::time::Duration,
    /// Shared by the shard's streams at start and by result publishing; replaced when
    /// it fails for good.
    pub producer: std::cell::RefCell<Producer>,
    /// Prepended to every topic name (several exchanges on one cluster, tests).
    pub topic_prefix: String,
    /// At start only: partitions already read, `(from, records, end)`.
    pub read_cache: std::cell::RefCell<rustc_hash::FxHashMap<(String, i32), std::rc::Rc<PartitionRead>>>,
}

type PartitionRead = (u64, Vec<kafka::Record>, u64);

impl KafkaBackend {
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// Publishes a symbol's result events to their topics, keyed by symbol.
    pub fn publish(&self, spec: &crate::engine::SymbolSpec, events: &[crate::engine::Event]) {
        let partition = kafka::partition_for(spec.name.as_bytes(), self.partitions);
        if kafka::is_fatal(&self.producer.borrow()) {
            match kafka::producer(&self.brokers, self.timeout) {
                Ok(fresh) => *self.producer.borrow_mut() = fresh,
                Err(e) => tracing::warn!(error = %e, "could not renew the results producer"),
            }
        }
        let producer = self.producer.borrow();
        for event in events {
            let (topic, bytes) = crate::wire::encode_event(spec, event);
            if !kafka::publish(&producer, &self.topic(topic), partition, &spec.name, &bytes) {
                tracing::warn!(symbol = spec.name, topic, "result not queued for Kafka");
            }
        }
    }
}

/// Every topic the exchange uses, with a prefix.
pub fn topics(prefix: &str) -> Vec<String> {
    TOPICS.iter().map(|t| format!("{prefix}{t}")).collect()
}

#[derive(Clone, Copy)]
pub enum Stream<'a> {
    Symbol(&'a str),
    Accounts(u32),
}

/// A stream's records from offset `from` on, as `(offset, payload)`, and its log
/// positioned after them.
pub async fn open(shard: &Shard, stream: Stream<'_>, from: u64) -> anyhow::Result<(Vec<(u64, Vec<u8>)>, Log)> {
    match &shard.kafka {
        None => {
            let dir = match stream {
                Stream::Symbol(name) => shard.config.data_dir.join("symbols").join(name),
                Stream::Accounts(p) => shard.config.data_dir.join("accounts").join(format!("{p:02}")),
            };
            let found = recover(&dir)?;
            if found.cut_bytes > 0 {
                tracing::warn!(log = %dir.display(), cut_bytes = found.cut_bytes, "cut a torn tail from the log");
            }
            let end = found.first_offset + found.records.len() as u64;
            let records = (found.first_offset..).zip(found.records).filter(|(o, _)| *o >= from).collect();
            Ok((records, Box::new(Journal::open(&dir, end).await?)))
        }
        Some(k) => {
            let (topic, key) = match stream {
                Stream::Symbol(name) => (k.topic(COMMANDS_TOPIC), name.to_owned()),
                Stream::Accounts(p) => (k.topic(ACCOUNTS_TOPIC), format!("accounts-{p:02}")),
            };
            let topic = topic.as_str();
            let partition = kafka::partition_for(key.as_bytes(), k.partitions);
            // Streams sharing a partition (every account partition does) read it once.
            let cached = k.read_cache.borrow().get(&(topic.to_owned(), partition)).filter(|c| c.0 <= from).cloned();
            let read = match cached {
                Some(read) => read,
                None => {
                    let (found, end) = kafka::read_partition(&k.brokers, topic, partition, from, std::time::Duration::from_secs(30))
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("reading {topic} for {key}"))?;
                    let read = std::rc::Rc::new((from, found, end));
                    k.read_cache.borrow_mut().insert((topic.to_owned(), partition), read.clone());
                    read
                }
            };
            let records = read
                .1
                .iter()
                .filter(|r| r.key == key.as_bytes() && r.offset >= from)
                .map(|r| (r.offset, r.payload.clone()))
                .collect();
            let log = KafkaLog::new(&k.brokers, k.timeout, k.producer.borrow().clone(), topic, partition, &key, read.2);
            Ok((records, Box::new(log)))
        }
    }
}
