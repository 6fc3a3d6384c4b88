//! Opening a stream's event log, embedded or Kafka, chosen once at start.
//!
//! A stream is a symbol's command log or an account partition's log. Embedded, each has
//! its own directory of segment files. In Kafka, symbol commands go to `orders.submitted`
//! keyed by symbol and account records to `accounts.adjusted` keyed by partition, each
//! in the partition Kafka's partitioner gives the key; a stream reads back only its key.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context;
use exchange_io::journal::{recover, Journal};
use exchange_io::kafka::{self, DeliveryFuture, KafkaLog, Producer};
use exchange_io::tenancy::Tenancy;
use futures_channel::mpsc;
use futures_lite::StreamExt;

use super::{Log, Shard};
use crate::wire::{ACCOUNTS_TOPIC, COMMANDS_TOPIC};

/// The Kafka clients of the process, made once before the shards start (so that
/// librdkafka's threads are not pinned to a shard's core) and shared by every shard:
/// one producer of commands and one of results for the whole process means one set of
/// librdkafka threads each, and the records of every core in the same requests.
#[derive(Clone)]
pub struct Clients {
    pub tenancy: Arc<Tenancy>,
    pub commands: Producer,
    pub results: Producer,
}

impl Clients {
    /// # Errors
    /// A producer could not be created.
    pub fn new(brokers: &str, timeout: std::time::Duration, tenancy: Arc<Tenancy>) -> Result<Self, String> {
        Ok(Self { tenancy, commands: kafka::producer(brokers, timeout)?, results: kafka::results_producer(brokers, timeout)? })
    }
}

/// The Kafka connection of a shard.
pub struct KafkaBackend {
    pub brokers: String,
    pub partitions: i32,
    pub timeout: std::time::Duration,
    /// The commands' producer, shared by the streams of every shard.
    pub producer: Producer,
    /// The results' producer: a connection of its own, so that result records never
    /// queue in front of the commands an acknowledgement waits for. Replaced when it
    /// fails for good.
    results: Rc<RefCell<Producer>>,
    /// Prepended to every topic name (several exchanges on one cluster, tests).
    pub topic_prefix: String,
    /// At start only: partitions already read, `(from, records, end)`.
    pub read_cache: RefCell<rustc_hash::FxHashMap<(String, i32), Rc<PartitionRead>>>,
    /// At start only: the producer of fences, with the start's patience (a broker just
    /// started, or a topic just created, can take longer than the order path's timeout).
    fences: RefCell<Option<Producer>>,
    /// Result records on their way to Kafka (see [`deliver`]).
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Which of them Kafka does not have yet.
    undelivered: Rc<Undelivered>,
    /// This process's claim on the topics (see [`exchange_io::tenancy`]).
    tenancy: Arc<Tenancy>,
}

/// Numbers result records as they are published, and keeps the numbers Kafka has not
/// confirmed yet, so that a snapshot can wait until the results of every command it
/// covers are in the log: a restart replays only the commands after a snapshot, so
/// results left in memory behind it would never be published again.
#[derive(Default)]
pub struct Undelivered {
    state: RefCell<Tickets>,
}

/// Tickets are issued in order; `done[i]` says whether ticket `first + i` is delivered,
/// and the front is dropped as soon as it is (most are delivered in order).
#[derive(Default)]
struct Tickets {
    first: u64,
    done: VecDeque<bool>,
}

impl Undelivered {
    fn issue(&self) -> u64 {
        let mut t = self.state.borrow_mut();
        t.done.push_back(false);
        t.first + t.done.len() as u64 - 1
    }

    fn delivered(&self, ticket: u64) {
        let mut t = self.state.borrow_mut();
        let Some(i) = ticket.checked_sub(t.first) else { return };
        if let Some(done) = t.done.get_mut(i as usize) {
            *done = true;
        }
        while t.done.front() == Some(&true) {
            t.done.pop_front();
            t.first += 1;
        }
    }

    /// A mark for every result published so far.
    pub fn mark(&self) -> u64 {
        let t = self.state.borrow();
        t.first + t.done.len() as u64
    }

    /// Whether every result published before `mark` is in Kafka.
    pub fn delivered_before(&self, mark: u64) -> bool {
        self.state.borrow().first >= mark
    }
}

#[cfg(test)]
mod tests {
    use super::Undelivered;

    #[test]
    fn a_mark_is_reached_once_every_result_before_it_is_delivered_in_any_order() {
        let u = Undelivered::default();
        let (a, b) = (u.issue(), u.issue());
        let mark = u.mark();
        let c = u.issue();
        assert!(!u.delivered_before(mark));
        u.delivered(b);
        assert!(!u.delivered_before(mark), "a is not in yet");
        u.delivered(c);
        u.delivered(a);
        assert!(u.delivered_before(mark));
        assert!(u.delivered_before(u.mark()));
        u.delivered(a);
        assert_eq!(u.mark(), 3);
    }
}

type PartitionRead = (u64, Vec<kafka::Record>, u64);

/// A result record, kept until Kafka has it.
struct Outgoing {
    topic: String,
    partition: i32,
    key: String,
    payload: Vec<u8>,
    report: Option<DeliveryFuture>,
    ticket: u64,
}

impl KafkaBackend {
    /// Takes the process's producers (see [`Clients`]) and starts the shard's result
    /// delivery task (on the calling executor).
    pub fn start(brokers: &str, partitions: i32, topic_prefix: &str, timeout: std::time::Duration, clients: Clients) -> Self {
        let Clients { tenancy, commands: producer, results } = clients;
        let results = Rc::new(RefCell::new(results));
        let (outbox, pending) = mpsc::unbounded();
        let undelivered = Rc::new(Undelivered::default());
        glommio::spawn_local(deliver(brokers.to_owned(), timeout, results.clone(), pending, undelivered.clone())).detach();
        Self {
            brokers: brokers.to_owned(),
            partitions,
            timeout,
            producer,
            results,
            topic_prefix: topic_prefix.to_owned(),
            read_cache: RefCell::default(),
            fences: RefCell::default(),
            outbox,
            undelivered,
            tenancy,
        }
    }

    /// The results not yet in Kafka.
    pub fn undelivered(&self) -> Rc<Undelivered> {
        self.undelivered.clone()
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// Publishes a symbol's result events to their topics, keyed by symbol. Not awaited:
    /// the delivery task makes sure each one reaches Kafka.
    pub fn publish(&self, spec: &crate::engine::SymbolSpec, events: &[crate::engine::Event]) {
        let partition = kafka::partition_for(spec.name.as_bytes(), self.partitions);
        let producer = self.results.borrow();
        for event in events {
            let (topic, payload) = crate::wire::encode_event(spec, event);
            let topic = self.topic(topic);
            let report = kafka::send(&producer, &topic, partition, &spec.name, &payload).ok();
            let ticket = self.undelivered.issue();
            let _ = self.outbox.unbounded_send(Outgoing { topic, partition, key: spec.name.clone(), payload, report, ticket });
        }
    }
}

/// Makes sure every result record reaches Kafka: awaits each delivery report, and sends
/// a record whose delivery failed (or that librdkafka did not take) again, with the same
/// bytes and so the same `eventId`, until it is in. Consumers deduplicate by `eventId`,
/// so a record that landed although its report said otherwise does no harm. Retries do
/// not hold back the records behind them: a failed one goes to the back of the line.
async fn deliver(
    brokers: String,
    timeout: std::time::Duration,
    producer: Rc<RefCell<Producer>>,
    mut incoming: mpsc::UnboundedReceiver<Outgoing>,
    undelivered: Rc<Undelivered>,
) {
    let mut line: VecDeque<Outgoing> = VecDeque::new();
    let mut failing = false;
    let mut paused = std::time::Instant::now();
    let mut renewed = std::time::Instant::now();
    loop {
        if line.is_empty() {
            match incoming.next().await {
                Some(o) => line.push_back(o),
                None => return,
            }
        }
        while let Ok(o) = incoming.try_recv() {
            line.push_back(o);
        }
        let Some(mut o) = line.pop_front() else { continue };
        let delivered = match o.report.take() {
            Some(report) => kafka::delivered(report).await,
            None => {
                // Refused at once (queue full, producer failed): going round again at
                // once would only spin.
                if paused.elapsed() > std::time::Duration::from_millis(100) {
                    glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
                    paused = std::time::Instant::now();
                }
                Err("not taken by the producer".into())
            }
        };
        match delivered {
            Ok(()) => {
                failing = false;
                undelivered.delivered(o.ticket);
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(topic = o.topic, error = e, "result not delivered to Kafka; sending it again until it is");
                }
                // An idempotent producer whose records timed out can stay stuck for good
                // (it must bump its epoch, which tansu refuses, or re-register with a
                // broker that lost it): a new one, at most once per timeout. Results carry
                // their eventId, so one that lands twice does no harm.
                if kafka::is_fatal(&producer.borrow()) || renewed.elapsed() > timeout {
                    let b = brokers.clone();
                    match exchange_io::offcore::run("kafka-clients", move || kafka::results_producer(&b, timeout)).await.and_then(|p| p) {
                        Ok(fresh) => *producer.borrow_mut() = fresh,
                        Err(e) => tracing::warn!(error = %e, "could not renew the results producer"),
                    }
                    renewed = std::time::Instant::now();
                }
                o.report = kafka::send(&producer.borrow(), &o.topic, o.partition, &o.key, &o.payload).ok();
                line.push_back(o);
            }
        }
    }
}
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
pub async fn open(shard: &Shard, stream: Stream<'_>, from: u64) -> anyhow::Result<Opened> {
    shard.health.starting(shard.id, "opening a log");
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
            // Records of a write that failed and could not be cut were voided here
            // (see `stream.rs`): they never count, like Kafka's below.
            let (records, voided_here) = without_voided(shard, stream, (found.first_offset..).zip(found.records).filter(|(o, _)| *o >= from));
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
                Stream::Symbol(name) => shard.map.symbols.iter().position(|s| s.name == name).map(|i| shard.epoch_record(i).0),
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
                    shard.health.starting(shard.id, "fencing a Kafka partition");
                    // A symbol's fence is the first record of its new epoch: what an
                    // earlier run (or another process) sent lands before it and is
                    // replayed, or after it and counts for no reader.
                    let fence = match &epoch {
                        Some(epoch) => kafka::fence_with(&producer, topic, partition, &key, epoch).await,
                        None => kafka::fence(&producer, topic, partition).await,
                    };
                    shard.health.starting(shard.id, "reading a Kafka partition");
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
                    tracing::debug!(shard = shard.id, topic, partition, records = found.len(), "read");
                    shard.health.starting(shard.id, "replaying a log");
                    let read = Rc::new((from, found, end));
                    k.read_cache.borrow_mut().insert((topic.to_owned(), partition), read.clone());
                    read
                }
            };
            // Records this node answered 503 for may have landed anyway: they never count.
            let ours = read.1.iter().filter(|r| r.key == key.as_bytes() && r.offset >= from).map(|r| (r.offset, r.payload.clone()));
            let (records, voided_here) = without_voided(shard, stream, ours);
            let log = KafkaLog::new(&k.brokers, k.timeout, k.producer.clone(), topic, partition, &key, read.2).with_tenancy(k.tenancy.clone());
            Ok(Opened { records, log: Box::new(log), voided_here })
        }
    }
}

/// Splits records read back into those that count and the offsets of those this node
/// voided (answered 503 for, though they may have reached the log).
fn without_voided(shard: &Shard, stream: Stream<'_>, found: impl Iterator<Item = (u64, Vec<u8>)>) -> (Vec<(u64, Vec<u8>)>, Vec<u64>) {
    let voided = super::voids::load(shard, stream);
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
