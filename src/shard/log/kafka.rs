//! Kafka as the event log: the process's producers, a shard's connection to them, and
//! the delivery of result records until Kafka has each one.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use exchange_io::kafka::{self, DeliveryFuture, Producer};
use exchange_io::tenancy::Tenancy;
use futures_channel::mpsc;
use futures_lite::StreamExt;
use glommio::channels::local_channel::LocalReceiver;

use crate::shard::rpc::TurnWake;

/// The Kafka clients of the process, made once before the shards start (so that
/// librdkafka's threads are not pinned to a shard's core) and shared by every shard:
/// one producer of commands and one of results for the whole process mean one set of
/// librdkafka threads each, and the records of every core in the same requests.
#[derive(Clone)]
pub struct Clients {
    pub tenancy: Arc<Tenancy>,
    pub commands: kafka::Commands,
    pub results: kafka::Results,
}

impl Clients {
    /// # Errors
    /// A producer could not be created.
    pub fn new(brokers: &str, timeout: std::time::Duration, tenancy: Arc<Tenancy>) -> Result<Self, String> {
        Ok(Self { tenancy, commands: kafka::Commands::new(brokers, timeout)?, results: kafka::Results::new(brokers, timeout)? })
    }
}

/// The Kafka connection of a shard.
pub struct KafkaBackend {
    pub brokers: String,
    pub partitions: i32,
    pub timeout: std::time::Duration,
    /// The commands' producer, shared by the streams of every shard, and their linger.
    pub producer: kafka::Commands,
    /// The result records of this core: gathered each turn, then delivered.
    results: Rc<Results>,
    /// Prepended to every topic name (several exchanges on one cluster, tests).
    pub topic_prefix: String,
    /// At start only: partitions already read, `(from, records, end)`.
    pub(super) read_cache: RefCell<rustc_hash::FxHashMap<(String, i32), Rc<PartitionRead>>>,
    /// At start only: the producer of fences, with the start's patience (a broker just
    /// started, or a topic just created, can take longer than the order path's timeout).
    pub(super) fences: RefCell<Option<Producer>>,
    /// This process's claim on the topics (see [`exchange_io::tenancy`]).
    pub(super) tenancy: Arc<Tenancy>,
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

/// The result records of one core. Everything the core executes in one turn of its
/// executor (the commands of every stream batch that completed) publishes into records
/// gathered per symbol and topic, a result a line; a task woken by the first of them,
/// and so run behind every task that was runnable then, sends each as one record.
/// A record's ticket is issued when it starts, so a snapshot taken meanwhile waits for it.
struct Results {
    /// A connection of its own, so that result records never queue in front of the
    /// commands an acknowledgement waits for. Replaced when it fails.
    producer: Rc<RefCell<kafka::Results>>,
    topic_prefix: String,
    partitions: i32,
    gathered: RefCell<Vec<Gathered>>,
    /// One result's JSON, before it joins its record.
    scratch: RefCell<Vec<u8>>,
    /// Wakes the sender once a turn.
    turn: TurnWake,
    /// Records on their way to Kafka (see [`deliver`]).
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Which of them Kafka does not have yet.
    undelivered: Rc<Undelivered>,
}

/// A result record being gathered.
struct Gathered {
    topic: &'static str,
    symbol: u32,
    partition: i32,
    key: String,
    payload: Vec<u8>,
    ticket: u64,
}

impl Results {
    fn publish(&self, spec: &crate::engine::SymbolSpec, events: &[crate::engine::Event]) {
        let mut gathered = self.gathered.borrow_mut();
        let mut scratch = self.scratch.borrow_mut();
        for event in events {
            scratch.clear();
            let topic = crate::wire::append_event(spec, event, &mut scratch);
            let at = gathered.iter().position(|g| g.topic == topic && g.symbol == spec.key);
            let record = match at {
                Some(i) if gathered[i].payload.len() + scratch.len() < super::RECORD_BYTES => &mut gathered[i],
                full => {
                    if let Some(i) = full {
                        self.send(gathered.swap_remove(i));
                    }
                    self.turn.raise();
                    let partition = kafka::partition_for(spec.name.as_bytes(), self.partitions);
                    let ticket = self.undelivered.issue();
                    gathered.push(Gathered { topic, symbol: spec.key, partition, key: spec.name.clone(), payload: Vec::new(), ticket });
                    let last = gathered.len() - 1;
                    &mut gathered[last]
                }
            };
            if !record.payload.is_empty() {
                record.payload.push(b'\n');
            }
            record.payload.extend_from_slice(&scratch);
        }
    }

    /// Every record gathered, sent.
    fn flush(&self) {
        self.turn.lower();
        let gathered = std::mem::take(&mut *self.gathered.borrow_mut());
        for record in gathered {
            self.send(record);
        }
    }

    fn send(&self, g: Gathered) {
        let topic = format!("{}{}", self.topic_prefix, g.topic);
        let report = kafka::send(&self.producer.borrow().producer, &topic, g.partition, &g.key, &g.payload).ok();
        let _ = self.outbox.unbounded_send(Outgoing { topic, partition: g.partition, key: g.key, payload: g.payload, report, ticket: g.ticket });
    }
}

/// Sends a core's gathered result records each time the first of a turn wakes it.
async fn send_gathered(results: Rc<Results>, woken: LocalReceiver<()>) {
    while woken.recv().await.is_some() {
        results.flush();
    }
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
        let (turn, woken) = TurnWake::new();
        let results = Rc::new(Results {
            producer: results,
            topic_prefix: topic_prefix.to_owned(),
            partitions,
            gathered: RefCell::default(),
            scratch: RefCell::default(),
            turn,
            outbox,
            undelivered,
        });
        glommio::spawn_local(send_gathered(results.clone(), woken)).detach();
        Self {
            brokers: brokers.to_owned(),
            partitions,
            timeout,
            producer,
            results,
            topic_prefix: topic_prefix.to_owned(),
            read_cache: RefCell::default(),
            fences: RefCell::default(),
            tenancy,
        }
    }

    /// The results not yet in Kafka.
    pub fn undelivered(&self) -> Rc<Undelivered> {
        self.results.undelivered.clone()
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.topic_prefix)
    }

    /// Publishes a symbol's result events to their topics, keyed by symbol, a record per
    /// topic for all that this core executes in one turn (see [`Results`]). Not awaited:
    /// the delivery task makes sure each record reaches Kafka.
    pub fn publish(&self, spec: &crate::engine::SymbolSpec, events: &[crate::engine::Event]) {
        self.results.publish(spec, events);
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
    producer: Rc<RefCell<kafka::Results>>,
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
                // broker that lost it): a new one, at most once per timeout, made once
                // for every core (the first to ask has it made, the others take it).
                // Results carry their eventId, so one that lands twice does no harm.
                let newer = producer.borrow().newer();
                if let Some(newer) = newer {
                    *producer.borrow_mut() = newer;
                } else if kafka::is_fatal(&producer.borrow().producer) || renewed.elapsed() > timeout {
                    producer.borrow().renew(&brokers, timeout);
                    renewed = std::time::Instant::now();
                    let newer = loop {
                        let newer = producer.borrow().newer();
                        if newer.is_some() || renewed.elapsed() > timeout {
                            break newer;
                        }
                        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                    };
                    if let Some(newer) = newer {
                        *producer.borrow_mut() = newer;
                    }
                }
                o.report = kafka::send(&producer.borrow().producer, &o.topic, o.partition, &o.key, &o.payload).ok();
                line.push_back(o);
            }
        }
    }
}
