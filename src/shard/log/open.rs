//! Opening a stream's log at start, and reading it back from an offset.
//!
//! A stream is a symbol's command log or an account partition's log. Embedded, each has
//! its own directory of segment files. In Kafka, symbol commands go to `orders.submitted`
//! keyed by symbol and account records to `accounts.adjusted` keyed by partition, each
//! in the partition Kafka's partitioner gives the key; a stream reads back only its key.

use std::rc::Rc;

use anyhow::Context;
use exchange_io::journal::{recover, Journal};
use exchange_io::kafka::{self, KafkaLog};

use super::{Log, LogRoom};
use crate::wire::{ACCOUNTS_TOPIC, COMMANDS_TOPIC};

#[derive(Clone, Copy)]
pub enum Stream<'a> {
    Symbol(&'a str),
    Accounts(u32),
}

/// A stream's log, opened at start.
pub struct Opened {
    /// The records from the offset asked for on, as `(offset, payload)`.
    pub records: Vec<(u64, Vec<u8>)>,
    /// The log, positioned after them.
    pub log: Log,
    /// Offsets of records left out because this node voided them (see
    /// [`super::voids`]): the caller appends their voids to the log itself.
    pub voided_here: Vec<u64>,
}

/// Opens a stream's log and reads it from offset `from` on.
pub async fn open(room: &LogRoom, stream: Stream<'_>, from: u64) -> anyhow::Result<Opened> {
    room.health.starting(room.id, "opening a log");
    match &room.kafka {
        None => {
            let dir = match stream {
                Stream::Symbol(name) => room.config.data_dir.join("symbols").join(name),
                Stream::Accounts(p) => room.config.data_dir.join("accounts").join(format!("{p:02}")),
            };
            let found = recover(&dir)?;
            if found.cut_bytes > 0 {
                tracing::warn!(log = %dir.display(), cut_bytes = found.cut_bytes, "cut a torn tail from the log");
            }
            let end = found.first_offset + found.records.len() as u64;
            // Records of a write that failed and could not be cut were voided here
            // (see `symbols/stream.rs`): they never count, like Kafka's below.
            let (records, voided_here) = without_voided(room, stream, (found.first_offset..).zip(found.records).filter(|(o, _)| *o >= from));
            Ok(Opened { records, log: Box::new(Journal::open(&dir, end).await?), voided_here })
        }
        Some(k) => {
            let (topic, key) = match stream {
                Stream::Symbol(name) => (k.topic(COMMANDS_TOPIC), name.to_owned()),
                Stream::Accounts(p) => (k.topic(ACCOUNTS_TOPIC), format!("accounts-{p:02}")),
            };
            let topic = topic.as_str();
            let partition = kafka::partition_for(key.as_bytes(), k.partitions);
            // Account partitions sharing a Kafka partition read it once. A symbol reads
            // up to its own epoch (below), so never from another's read.
            let epoch = match stream {
                Stream::Symbol(name) => room.map.symbols.iter().position(|s| s.name == name).map(|i| room.epoch_record(i).0),
                Stream::Accounts(_) => None,
            };
            let cached = if epoch.is_some() { None } else { k.read_cache.borrow().get(&(topic.to_owned(), partition)).filter(|c| c.0 <= from).cloned() };
            let read = match cached {
                Some(read) => read,
                None => {
                    // Fenced: everything a previous process sent is read before any new
                    // record can be appended (see `kafka::fence`).
                    let producer = match k.fences.borrow_mut().take() {
                        Some(p) => p,
                        None => {
                            let brokers = k.brokers.clone();
                            exchange_io::offcore::run("kafka-clients", move || kafka::producer(&brokers, std::time::Duration::from_secs(30)))
                                .await
                                .and_then(|p| p)
                                .map_err(anyhow::Error::msg)?
                        }
                    };
                    room.health.starting(room.id, "fencing a Kafka partition");
                    // A symbol's fence is the first record of its new epoch: what an
                    // earlier run (or another process) sent lands before it and is
                    // replayed, or after it and counts for no reader.
                    let fence = match &epoch {
                        Some(epoch) => kafka::fence_with(&producer, topic, partition, &key, epoch).await,
                        None => kafka::fence(&producer, topic, partition).await,
                    };
                    room.health.starting(room.id, "reading a Kafka partition");
                    *k.fences.borrow_mut() = Some(producer);
                    let fence = fence.map_err(anyhow::Error::msg)?;
                    // A consumer's polls block: read off the shard's core.
                    let (brokers, t) = (k.brokers.clone(), topic.to_owned());
                    let (found, end) = exchange_io::offcore::run("kafka-replay", move || {
                        kafka::read_partition_to(&brokers, &t, partition, from, fence + 1, std::time::Duration::from_secs(30))
                    })
                    .await
                    .and_then(|r| r)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("reading {topic} for {key}"))?;
                    tracing::debug!(shard = room.id, topic, partition, records = found.len(), "read");
                    room.health.starting(room.id, "replaying a log");
                    let read = Rc::new((from, found, end));
                    k.read_cache.borrow_mut().insert((topic.to_owned(), partition), read.clone());
                    read
                }
            };
            // Records this node answered 503 for may have landed anyway: they never count.
            let ours = read.1.iter().filter(|r| r.key == key.as_bytes() && r.offset >= from).map(|r| (r.offset, r.payload.clone()));
            let (records, voided_here) = without_voided(room, stream, ours);
            let log = KafkaLog::new(&k.brokers, k.timeout, k.producer.clone(), topic, partition, &key, read.2).with_tenancy(k.tenancy.clone());
            Ok(Opened { records, log: Box::new(log), voided_here })
        }
    }
}

/// Splits records read back into those that count and the offsets of those this node
/// voided (answered 503 for, though they may have reached the log).
fn without_voided(room: &LogRoom, stream: Stream<'_>, found: impl Iterator<Item = (u64, Vec<u8>)>) -> (Vec<(u64, Vec<u8>)>, Vec<u64>) {
    let voided = super::voids::load(room, stream);
    let (mut records, mut voided_here) = (Vec::new(), Vec::new());
    for (offset, payload) in found {
        if !voided.is_empty() && voided.contains(&super::voids::digest(&payload)) {
            voided_here.push(offset);
        } else {
            records.push((offset, payload));
        }
    }
    (records, voided_here)
}

/// Appends void records (already encoded) and waits until the log has them.
///
/// # Errors
/// The log did not take them.
pub async fn append_voids(log: &mut Log, voids: &[Vec<u8>]) -> anyhow::Result<()> {
    if voids.is_empty() {
        return Ok(());
    }
    for v in voids {
        log.append(v)?;
    }
    log.commit().await?;
    Ok(())
}
