//! Kafka as the event log, through rdkafka (librdkafka), without tokio.
//!
//! - Idempotent producers made once for the process and shared by its shards
//!   (`enable.idempotence=true`, so `acks=all` and ordered retries), with compression;
//!   commands are sent at once, a busy stream's gathered first (see [`Commands`]). Sends
//!   are never awaited one at a time: a stream appends every record of a batch, then
//!   awaits all of their delivery reports together. The reports complete from librdkafka's own thread, so
//!   they can be awaited on a glommio core.
//! - A stream writes one partition of a topic, chosen from its key with Kafka's own
//!   partitioner (murmur2), so any producer keyed the same way lands in the same place.
//!   Several streams may share a partition; readers filter by key.
//! - Replay reads a partition from an offset up to the high watermark it found when it
//!   started, with a plain consumer assignment (no group, no committed offsets: the
//!   exchange keeps its own offsets in its snapshots).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::NaiveRuntime;
use rdkafka::{Offset, TopicPartitionList};

use crate::journal::JournalError;
use crate::{Confirmation, EventLog};

pub type Producer = FutureProducer<DefaultClientContext, NaiveRuntime>;
pub use rdkafka::producer::DeliveryFuture;

/// How long librdkafka waits to fill a batch (`linger.ms`, fractions allowed), from the
/// environment variable `var`, or `default`.
fn linger_ms(var: &str, default: &str) -> String {
    std::env::var(var).ok().filter(|v| v.parse::<f64>().is_ok()).unwrap_or_else(|| default.into())
}

/// A producer that sends each record as soon as librdkafka's thread wakes (`linger.ms`
/// 0): commands, which an acknowledgement waits for, and fences and records written at
/// start. `timeout` bounds how long a record may wait for the broker before its
/// delivery fails (and the request it carries is answered 503).
///
/// # Errors
/// An invalid setting.
pub fn producer(brokers: &str, timeout: Duration) -> Result<Producer, String> {
    producer_lingering(brokers, timeout, "0")
}

/// The commands' producer, shared by every stream, and how long a busy stream gathers
/// its commands before it sends them (see [`Pace`]).
///
/// Every record sent wakes librdkafka's broker thread, and that thread then walks every
/// partition it produces to: measured, sending each batch at once cost the commands'
/// broker thread 37-39 % of a core at ~8,000 orders/s (about 50 µs an order), and under
/// load the acknowledgement's tail grew (perf/RESULTS.md, "Kafka linger"). Waiting a
/// millisecond for more commands costs a quiet exchange that millisecond at the median.
/// So a stream sends at once while its batches find the way clear, and gathers for
/// `linger` while they queue behind each other; what it gathered goes out as one record
/// (one line a command), where librdkafka's own `linger.ms` would still have made one
/// record, one delivery report and one write at the broker for each command.
#[derive(Clone)]
pub struct Commands {
    /// `linger.ms` 0.
    pub producer: Producer,
    /// From `EXCHANGE_KAFKA_LINGER_MS` (fractions allowed; 1 by default); `None` when
    /// that is 0 (every stream sends at once).
    pub linger: Option<Duration>,
    /// Where the replacements of the producer are made, once for every stream that
    /// shares it (see [`Renewals`]), and which of them this one is.
    renewals: Arc<Renewals>,
    generation: u64,
}

impl Commands {
    /// # Errors
    /// The producer could not be created (an invalid setting).
    pub fn new(brokers: &str, timeout: Duration) -> Result<Self, String> {
        let ms = linger_ms("EXCHANGE_KAFKA_LINGER_MS", "1").parse::<f64>().unwrap_or(1.0);
        let linger = (ms > 0.0).then(|| Duration::from_secs_f64(ms.min(1_000.0) / 1_000.0));
        Ok(Self { linger, ..Self::from(producer(brokers, timeout)?) })
    }

    /// The replacement made since this producer, if there is one.
    fn newer(&self) -> Option<Self> {
        let (producer, generation) = self.renewals.newer(self.generation)?;
        Some(Self { producer, generation, ..self.clone() })
    }

    /// Has a replacement made for every stream that shares this producer (see
    /// [`Renewals::renew`]).
    fn renew(&self, brokers: &str, timeout: Duration) {
        self.renewals.renew(self.generation, brokers, timeout);
    }
}

/// Every stream sends at once.
impl From<Producer> for Commands {
    fn from(producer: Producer) -> Self {
        Self { producer, linger: None, renewals: Arc::new(Renewals::new(self::producer)), generation: 0 }
    }
}

/// The producer of result records, shared by every core of the process, and its
/// replacement after a failure, made once for all of them (see [`Renewals`]). Results
/// carry their `eventId`, so a core takes a replacement at once, whatever it has in flight.
#[derive(Clone)]
pub struct Results {
    pub producer: Producer,
    renewals: Arc<Renewals>,
    generation: u64,
}

impl Results {
    /// # Errors
    /// The producer could not be created (an invalid setting).
    pub fn new(brokers: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self { producer: results_producer(brokers, timeout)?, renewals: Arc::new(Renewals::new(results_producer)), generation: 0 })
    }

    /// The replacement made since this producer, if there is one.
    pub fn newer(&self) -> Option<Self> {
        let (producer, generation) = self.renewals.newer(self.generation)?;
        Some(Self { producer, generation, renewals: self.renewals.clone() })
    }

    /// Has a replacement made for every core (see [`Renewals::renew`]).
    pub fn renew(&self, brokers: &str, timeout: Duration) {
        self.renewals.renew(self.generation, brokers, timeout);
    }
}

/// Replacing the commands' producer after it failed.
///
/// An idempotent producer whose sends timed out may be fenced for good (a broker that
/// cannot bump its epoch answers ProducerFenced), and one that hit a fatal error
/// (sequence lost, fenced) refuses every record from then on: either way its streams
/// start over with a new producer, which gets a new producer id. Every stream of the
/// process shares the producer, so the first that finds it failed has one replacement
/// made for all of them (not one each), and each takes it as soon as it may: with
/// nothing of its own in flight (two producers do not keep each other's order), or at
/// once if its producer failed for good (nothing more of it will land).
struct Renewals {
    /// Of the newest replacement (0: none yet); read without the lock on every record.
    generation: AtomicU64,
    state: std::sync::Mutex<RenewalState>,
    /// How a replacement is made.
    make: fn(&str, Duration) -> Result<Producer, String>,
}

impl Renewals {
    fn new(make: fn(&str, Duration) -> Result<Producer, String>) -> Self {
        Self { generation: AtomicU64::new(0), state: std::sync::Mutex::default(), make }
    }

    /// The newest replacement, if it was made after `generation`.
    fn newer(&self, generation: u64) -> Option<(Producer, u64)> {
        if self.generation.load(Ordering::Acquire) == generation {
            return None;
        }
        let state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.newest.clone()
    }

    /// Starts making a replacement for everyone who shares the producer of `generation`,
    /// on a thread of its own ([`crate::offcore`]: librdkafka starts threads per client,
    /// and they must not inherit a shard's core; nor may a shard wait for the creation);
    /// unless one is being made, or was made since that one.
    fn renew(self: &Arc<Self>, generation: u64, brokers: &str, timeout: Duration) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.making || self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        state.making = true;
        drop(state);
        let (renewals, brokers) = (self.clone(), brokers.to_owned());
        let started = crate::offcore::spawn("kafka-clients", move || {
            let made = (renewals.make)(&brokers, timeout);
            let mut state = renewals.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match made {
                Ok(fresh) => {
                    let generation = renewals.generation.load(Ordering::Acquire) + 1;
                    state.newest = Some((fresh, generation));
                    renewals.generation.store(generation, Ordering::Release);
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the Kafka producer; trying again with the next record"),
            }
            state.making = false;
        });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no thread to renew the Kafka producer on; trying again with the next record");
            self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).making = false;
        }
    }
}

#[derive(Default)]
struct RenewalState {
    /// A replacement is being made.
    making: bool,
    newest: Option<(Producer, u64)>,
}

/// Whether a stream gathers its commands before sending them ([`Commands`]).
///
/// The measure of load is how many earlier batches of the stream are still unconfirmed
/// when a batch is sent, averaged over the last few batches: none when each batch
/// finds the way clear, several when batches come faster than the broker's round trip.
/// A stream starts to gather once that average reaches four ([`Pace::BUSY`]) and sends
/// at once again when it falls below one ([`Pace::QUIET`]); gathering sends fewer,
/// larger batches, so the same rate shows fewer of them ahead, and the gap between the
/// two keeps a stream from flapping. A stream that sent nothing for [`Pace::IDLE`] is
/// quiet whatever came before: the first command after a burst goes out at once.
#[derive(Default)]
struct Pace {
    gathering: bool,
    /// Batches sent and not yet confirmed (shared with their confirmations).
    in_flight: Rc<Cell<usize>>,
    /// The average of batches ahead, in 1/256ths, weighted 1/8 to the newest.
    ahead: u32,
    last_sent: Option<std::time::Instant>,
}

impl Pace {
    /// Four batches ahead: measured (perf/RESULTS.md, "A linger that follows the load"),
    /// two switched streams to lingering at 2,000 orders/s, where sending at once still
    /// answered at half the median; eight flapped at 5,000/s.
    const BUSY: u32 = 4 * 256;
    const QUIET: u32 = 256;
    /// A busy stream sends about every linger (1 ms); ten times that without a batch is
    /// not busy.
    const IDLE: Duration = Duration::from_millis(10);

    /// Whether the next batch is gathered, `now`.
    fn gathering(&self, now: std::time::Instant) -> bool {
        self.gathering && self.last_sent.is_some_and(|at| now.duration_since(at) < Self::IDLE)
    }

    /// Counts a batch sent (`now`), updates the choice for the next one, and returns a
    /// guard that counts the batch back when dropped.
    fn sent(&mut self, can_gather: bool, now: std::time::Instant) -> InFlight {
        if !self.gathering(now) {
            // After a pause, what came before says nothing of the load now.
            self.gathering = false;
            if self.last_sent.is_none_or(|at| now.duration_since(at) >= Self::IDLE) {
                self.ahead = 0;
            }
        }
        self.last_sent = Some(now);
        let ahead = u32::try_from(self.in_flight.get()).unwrap_or(u32::MAX).min(64) * 256;
        self.ahead = self.ahead - self.ahead / 8 + ahead / 8;
        self.gathering = can_gather && if self.gathering { self.ahead >= Self::QUIET } else { self.ahead >= Self::BUSY };
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(self.in_flight.clone())
    }
}

/// A batch in flight, until its confirmation completes or is dropped.
struct InFlight(Rc<Cell<usize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// The producer of result records, which nobody waits for: it lingers (5 ms by default,
/// `EXCHANGE_KAFKA_RESULTS_LINGER_MS`) so that the results of many commands travel in
/// one request, which costs the broker and librdkafka far less than one request each.
///
/// # Errors
/// An invalid setting.
pub fn results_producer(brokers: &str, timeout: Duration) -> Result<Producer, String> {
    producer_lingering(brokers, timeout, &linger_ms("EXCHANGE_KAFKA_RESULTS_LINGER_MS", "5"))
}

fn producer_lingering(brokers: &str, timeout: Duration, linger: &str) -> Result<Producer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger)
        .set("batch.num.messages", "10000")
        .set("compression.codec", "lz4")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set("socket.timeout.ms", timeout.as_millis().max(10).to_string())
        .create()
        .map_err(|e| format!("kafka producer for {brokers}: {e}"))
}

/// How many copies the exchange's topics have, read from the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    /// Brokers in the cluster.
    pub brokers: usize,
    /// Copies asked for (`replication_factor`).
    pub wanted: i32,
    /// The fewest copies any partition of the topics has.
    pub actual: i32,
}

impl Replication {
    pub fn is_short(&self) -> bool {
        self.actual < self.wanted
    }
}

/// Creates the topics that do not exist yet, then reads how many copies every partition
/// of them has: topics created on a smaller cluster (or by someone else) keep fewer
/// copies than asked for even after brokers are added, and the start says so each time.
///
/// # Errors
/// The cluster could not be reached, or a topic could not be created.
pub async fn ensure_topics(brokers: &str, topics: &[&str], settings: &TopicSettings) -> Result<Replication, String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("kafka admin client for {brokers}: {e}"))?;
    let found = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| format!("kafka metadata from {brokers}: {e}"))?
        .brokers()
        .len();
    // Created with what the cluster can give (a warning below says so).
    let (replication, min_insync) = settings.for_cluster(found);
    let (min_insync, retention) = (min_insync.to_string(), settings.retention_ms.to_string());
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(t, settings.partitions, TopicReplication::Fixed(replication))
                .set("min.insync.replicas", &min_insync)
                .set("retention.ms", &retention)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new, &opts).await.map_err(|e| format!("creating topics: {e}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("creating topic {topic}: {code}")),
        }
    }
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10)).map_err(|e| format!("kafka metadata from {brokers}: {e}"))?;
    let actual = metadata
        .topics()
        .iter()
        .filter(|t| topics.contains(&t.name()))
        .flat_map(|t| t.partitions().iter().map(|p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX)))
        .min()
        .unwrap_or(0);
    let found = Replication { brokers: metadata.brokers().len(), wanted: settings.replication_factor, actual };
    if found.is_short() {
        tracing::warn!(
            brokers = found.brokers,
            wanted = found.wanted,
            actual = found.actual,
            "the event log's topics have fewer copies than the replication factor asks for: a broker's loss can lose acknowledged orders (add brokers and reassign the partitions)"
        );
    }
    Ok(found)
}

/// How the exchange creates its topics (existing ones are left as they are).
#[derive(Clone, Debug)]
pub struct TopicSettings {
    pub partitions: i32,
    /// Copies of each partition (production: 3).
    pub replication_factor: i32,
    /// Copies that must have a record before it counts as written (production: 2); with
    /// the producer's `acks=all`, a write survives the loss of all but that many brokers.
    pub min_insync_replicas: i32,
    /// How long records are kept.
    pub retention_ms: i64,
}

impl TopicSettings {
    /// Replication factor and `min.insync.replicas` a cluster of `brokers` can give:
    /// what is asked, or, with fewer brokers, all of them and at most that many in sync.
    pub fn for_cluster(&self, brokers: usize) -> (i32, i32) {
        let brokers = i32::try_from(brokers).unwrap_or(i32::MAX).max(1);
        let replication = self.replication_factor.clamp(1, brokers);
        (replication, self.min_insync_replicas.clamp(1, replication))
    }
}

#[cfg(test)]
mod topic_tests {
    use super::TopicSettings;

    #[test]
    fn a_small_cluster_gets_what_it_can_give() {
        let s = TopicSettings { partitions: 8, replication_factor: 3, min_insync_replicas: 2, retention_ms: 1 };
        assert_eq!(s.for_cluster(5), (3, 2));
        assert_eq!(s.for_cluster(3), (3, 2));
        assert_eq!(s.for_cluster(2), (2, 2));
        assert_eq!(s.for_cluster(1), (1, 1));
        assert_eq!(s.for_cluster(0), (1, 1));
    }
}

/// Kafka's default partitioner for a key: murmur2, made positive, modulo the count.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// One stream's records in one partition of a topic.
pub struct KafkaLog {
    brokers: String,
    timeout: Duration,
    commands: Commands,
    pace: Pace,
    topic: String,
    partition: i32,
    key: String,
    pending: Vec<DeliveryFuture>,
    /// Shared with the confirmations in flight, which complete after `send` returned.
    next_offset: Rc<Cell<u64>>,
    /// This process's claim on the topics, and its track of this partition: batches are
    /// confirmed only while the claim holds.
    tenancy: Option<Guard>,
}

/// A claim on the topics and the track of one partition (see [`crate::tenancy`]).
type Guard = (std::sync::Arc<crate::tenancy::Tenancy>, std::sync::Arc<std::sync::Mutex<crate::tenancy::Track>>);

impl KafkaLog {
    pub fn new(brokers: &str, timeout: Duration, commands: impl Into<Commands>, topic: &str, partition: i32, key: &str, next_offset: u64) -> Self {
        Self {
            brokers: brokers.to_owned(),
            timeout,
            commands: commands.into(),
            pace: Pace::default(),
            topic: topic.to_owned(),
            partition,
            key: key.to_owned(),
            pending: Vec::new(),
            next_offset: Rc::new(Cell::new(next_offset)),
            tenancy: None,
        }
    }

    /// Confirms batches only while `tenancy` holds (see [`crate::tenancy`]).
    #[must_use]
    pub fn with_tenancy(mut self, tenancy: std::sync::Arc<crate::tenancy::Tenancy>) -> Self {
        let track = tenancy.track(&self.topic, self.partition);
        self.tenancy = Some((tenancy, track));
        self
    }

    /// Takes the producer's replacement once it is made and may be taken (see
    /// [`Renewals`]); has one made if the producer hit a fatal error.
    ///
    /// # Errors
    /// The stream has no usable producer, or another process writes the log now.
    fn usable(&mut self) -> Result<(), JournalError> {
        if let Some(why) = self.tenancy.as_ref().and_then(|(t, _)| t.lost()) {
            return Err(JournalError::Superseded(why));
        }
        if (self.pace.in_flight.get() == 0 || is_fatal(self.producer()))
            && let Some(fresh) = self.commands.newer()
        {
            tracing::info!(topic = self.topic, key = self.key, "Kafka producer replaced");
            self.commands = fresh;
        }
        if is_fatal(self.producer()) {
            self.commands.renew(&self.brokers, self.timeout);
            return Err(JournalError::Write("the Kafka producer failed for good and is being replaced".into()));
        }
        Ok(())
    }

    /// Which producer the stream sends through (for tests: streams that share one).
    #[doc(hidden)]
    pub fn producer_id(&self) -> usize {
        use rdkafka::producer::Producer as _;
        self.producer().client().native_ptr() as usize
    }

    fn producer(&self) -> &Producer {
        &self.commands.producer
    }

    /// Makes the producer hit a fatal error, as a fenced one or one that lost a
    /// sequence does (librdkafka cannot be made to produce either at will): for tests of
    /// what follows.
    #[doc(hidden)]
    pub fn inject_fatal_error(&self) {
        inject_fatal_error(self.producer());
    }
}

/// Awaits every delivery report of a batch, then a tenancy check that started after
/// them (see [`crate::tenancy`]), but never longer than `timeout` after the batch was
/// sent: librdkafka checks `message.timeout.ms` only now and then (a killed broker's
/// records were seen failing after 2.4 times it), and the client is owed an answer
/// within the configured time.
async fn confirm(pending: Vec<DeliveryFuture>, timeout: Duration, tenancy: Option<Guard>) -> Result<Vec<u64>, JournalError> {
    let reports = async {
        let mut offsets = Vec::with_capacity(pending.len());
        let mut failure = None;
        // Await every report, even after a failure, so none is left behind.
        for delivery in pending {
            match delivery.await {
                Ok(Ok(d)) => offsets.push(u64::try_from(d.offset).unwrap_or(0)),
                Ok(Err((e, _))) => failure = Some(e.to_string()),
                Err(_) => failure = Some("producer closed".into()),
            }
        }
        if let Some(e) = failure {
            return Err(JournalError::Write(e));
        }
        if let Some((tenancy, track)) = &tenancy {
            tenancy.cleared(track, &offsets).await.map_err(JournalError::Superseded)?;
        }
        Ok(offsets)
    };
    let deadline = async {
        glommio::timer::sleep(timeout).await;
        Err(JournalError::Write(format!("no acknowledgement from Kafka within {} ms", timeout.as_millis())))
    };
    futures_lite::future::or(reports, deadline).await
}

impl EventLog for KafkaLog {
    fn append(&mut self, payload: &[u8]) -> Result<(), JournalError> {
        self.usable()?;
        let record = FutureRecord::to(&self.topic).partition(self.partition).key(&self.key).payload(payload);
        let delivery = self.producer().send_result(record).map_err(|(e, _)| {
            if is_fatal(self.producer()) {
                self.commands.renew(&self.brokers, self.timeout);
            }
            JournalError::Write(e.to_string())
        })?;
        self.pending.push(delivery);
        Ok(())
    }

    fn commit(&mut self) -> Pin<Box<dyn Future<Output = Result<Vec<u64>, JournalError>> + '_>> {
        let confirmation = self.send();
        Box::pin(async move {
            match confirmation {
                Some(c) => c.await,
                None => Ok(Vec::new()),
            }
        })
    }

    fn send(&mut self) -> Option<Confirmation> {
        let pending = std::mem::take(&mut self.pending);
        let (next_offset, commands, timeout, brokers) = (self.next_offset.clone(), self.commands.clone(), self.timeout, self.brokers.clone());
        let tenancy = self.tenancy.clone();
        let gathering = self.pace.gathering;
        let in_flight = self.pace.sent(self.commands.linger.is_some(), std::time::Instant::now());
        if self.pace.gathering != gathering {
            tracing::debug!(topic = self.topic, key = self.key, gathering = self.pace.gathering, "the stream's pace changed");
        }
        Some(Box::pin(async move {
            let confirmed = confirm(pending, timeout, tenancy).await;
            drop(in_flight);
            match &confirmed {
                Ok(offsets) => {
                    if let Some(last) = offsets.iter().max() {
                        next_offset.set(next_offset.get().max(last + 1));
                    }
                }
                Err(JournalError::Superseded(_)) => {}
                Err(_) => commands.renew(&brokers, timeout),
            }
            confirmed
        }))
    }

    fn next_offset(&self) -> u64 {
        self.next_offset.get()
    }

    fn gathering(&self) -> Option<Duration> {
        self.commands.linger.filter(|_| self.pace.gathering(std::time::Instant::now()))
    }

    fn read_back(&mut self, from: u64, patience: Duration) -> crate::ReadBack<'_> {
        let (brokers, topic, partition, key) = (self.brokers.clone(), self.topic.clone(), self.partition, self.key.clone());
        let (tx, rx) = futures_channel::oneshot::channel();
        // The consumer blocks: read on a helper thread, not on the shard's core.
        let started = crate::offcore::spawn("kafka-read-back", move || {
            let read = read_partition(&brokers, &topic, partition, from, patience).map(|(records, _)| {
                records.into_iter().filter(|r| r.key == key.as_bytes()).map(|r| (r.offset, r.payload)).collect()
            });
            let _ = tx.send(read);
        });
        if let Err(e) = started {
            return Box::pin(async move { Err(JournalError::Write(format!("no read-back thread: {e}"))) });
        }
        Box::pin(async move {
            match rx.await {
                Ok(Ok(records)) => Ok(records),
                Ok(Err(e)) => Err(JournalError::Write(e)),
                Err(_) => Err(JournalError::Write("read-back thread ended".into())),
            }
        })
    }
}

/// The key of fence records: empty records that a process starting to read a partition
/// writes first, and reads up to. Every record a previous process of the same streams
/// had sent before it died (still in the broker's hands when the new one started) is
/// in the partition before the fence, so it is read and replayed, never appended behind
/// the new process's back. Readers skip them (by key, or as empty payloads).
pub const FENCE_KEY: &str = "fence";

/// Writes a fence record to the partition and returns its offset.
///
/// # Errors
/// The broker did not take it.
pub async fn fence(producer: &Producer, topic: &str, partition: i32) -> Result<u64, String> {
    fence_with(producer, topic, partition, FENCE_KEY, b"").await
}

/// [`fence`] with a record of the caller's (a stream's first record of a new run).
///
/// # Errors
/// The broker did not take it.
pub async fn fence_with(producer: &Producer, topic: &str, partition: i32, key: &str, payload: &[u8]) -> Result<u64, String> {
    let report = send(producer, topic, partition, key, payload)?;
    match report.await {
        Ok(Ok(delivery)) => u64::try_from(delivery.offset).map_err(|e| e.to_string()),
        Ok(Err((e, _))) => Err(format!("{topic}/{partition}: fence: {e}")),
        Err(_) => Err(format!("{topic}/{partition}: fence: producer closed")),
    }
}

/// Sends a record and returns its delivery report, to await later.
///
/// # Errors
/// librdkafka did not take the record (its queue is full, or the producer failed).
pub fn send(producer: &Producer, topic: &str, partition: i32, key: &str, payload: &[u8]) -> Result<DeliveryFuture, String> {
    let record = FutureRecord::to(topic).partition(partition).key(key).payload(payload);
    producer.send_result(record).map_err(|(e, _)| e.to_string())
}

/// Whether a delivery report says the record is in the log.
pub async fn delivered(report: DeliveryFuture) -> Result<(), String> {
    match report.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e.to_string()),
        Err(_) => Err("producer closed".into()),
    }
}

/// Whether a producer hit an error it cannot recover from (it must be replaced).
pub fn is_fatal(producer: &Producer) -> bool {
    use rdkafka::producer::Producer as _;
    producer.client().fatal_error().is_some()
}

/// Makes `producer` hit a fatal error, as a fenced one or one that lost a sequence does
/// (librdkafka cannot be made to produce either at will): for tests of what follows.
#[doc(hidden)]
pub fn inject_fatal_error(producer: &Producer) {
    use rdkafka::producer::Producer as _;
    let reason = c"injected by a test";
    // SAFETY: the client pointer is valid while `producer` lives; the reason is a
    // NUL-terminated string librdkafka copies.
    unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        );
    }
}

/// A record read back from a partition.
pub struct Record {
    pub offset: u64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// How far before the offset it wants a reader starts (and drops what comes before it).
/// A fetch is meant to return the whole batch that holds the offset asked for; tansu
/// 0.6 returns the batch after it instead, so a read starting inside a batch the
/// producer sent (up to `batch.num.messages`, 10,000, records) would miss the rest of
/// it. With Apache Kafka this only reads a little more.
const REREAD: u64 = 10_000;

/// Every record of `partition` from `from` on, up to the end the partition had when
/// reading began. Returns the end offset too.
///
/// # Errors
/// When the broker cannot be reached, or stays silent for `patience`.
pub fn read_partition(brokers: &str, topic: &str, partition: i32, from: u64, patience: Duration) -> Result<(Vec<Record>, u64), String> {
    read_partition_to(brokers, topic, partition, from, 0, patience)
}

/// [`read_partition`], reading at least up to offset `at_least` (exclusive) whatever the
/// watermark says: the offset after a fence record the reader wrote itself (see
/// [`fence`]).
///
/// # Errors
/// As [`read_partition`].
pub fn read_partition_to(brokers: &str, topic: &str, partition: i32, from: u64, at_least: u64, patience: Duration) -> Result<(Vec<Record>, u64), String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "exchange-replay")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("socket.timeout.ms", patience.as_millis().max(1_100).to_string())
        .set("fetch.wait.max.ms", "50")
        .create()
        .map_err(|e| format!("kafka consumer: {e}"))?;
    let read = || -> Result<(Vec<Record>, u64), String> {
        let asked = std::time::Instant::now();
        let (low, high) = loop {
            match consumer.fetch_watermarks(topic, partition, patience) {
                Ok(marks) => break marks,
                Err(e) if passing(&e) && asked.elapsed() < patience => {
                    tracing::warn!(topic, partition, error = %e, "asking again for the watermarks: the Kafka client reconnects by itself");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("{topic}/{partition}: watermarks: {e}")),
            }
        };
        let (low, high) = (u64::try_from(low).unwrap_or(0), u64::try_from(high).unwrap_or(0).max(at_least));
        let start = from.max(low);
        let mut records: Vec<Record> = Vec::new();
        let mut tpl = TopicPartitionList::new();
        let reread = start.saturating_sub(REREAD).max(low);
        tpl.add_partition_offset(topic, partition, Offset::Offset(reread as i64)).map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| format!("{topic}/{partition}: assign: {e}"))?;
        // The high watermark is where reading must at least get to; past it, reading goes on
        // until the partition stays quiet, because a broker may report a watermark behind
        // what it has acknowledged (tansu 0.6 reports the last batch's base offset + 1).
        let mut quiet_since = std::time::Instant::now();
        loop {
            let reached = records.last().map_or(start, |r| r.offset + 1) >= high;
            let wait = if reached { Duration::from_millis(100) } else { Duration::from_millis(500) };
            match consumer.poll(wait) {
                Some(Ok(m)) if m.offset() < start as i64 => quiet_since = std::time::Instant::now(),
                Some(Ok(m)) => {
                    quiet_since = std::time::Instant::now();
                    records.push(Record {
                        offset: u64::try_from(m.offset()).unwrap_or(0),
                        key: m.key().unwrap_or_default().to_vec(),
                        payload: m.payload().unwrap_or_default().to_vec(),
                    });
                }
                Some(Err(e)) if !passing(&e) => return Err(format!("{topic}/{partition}: {e}")),
                Some(Err(e)) => tracing::warn!(topic, partition, error = %e, "reading goes on: the Kafka client reconnects by itself"),
                None if reached => break,
                None => {}
            }
            if !reached && quiet_since.elapsed() > patience {
                return Err(format!("{topic}/{partition}: no records for {patience:?} before offset {high}"));
            }
        }
        let end = records.last().map_or(start.max(high), |r| (r.offset + 1).max(high));
        Ok((records, end))
    };
    let result = read();
    close_aside(consumer);
    result
}

/// Whether a consumer's error only reports what librdkafka recovers from by itself: a
/// connection the broker dropped (`AllBrokersDown` when every connection is down at
/// once, as a busy broker's can be for a moment), a request that timed out, a leader
/// that moved. librdkafka goes on reconnecting and fetching from the consumer's own
/// position, so the reader goes on polling (its patience still bounds a silence);
/// anything else (an offset out of range, a topic that is gone, an authorisation error)
/// ends the read.
fn passing(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
        )
    )
}

/// Drops a consumer on a thread of its own: dropping one that has a `group.id` (which
/// `assign` needs here) waits for the group's close handshake, and against tansu 0.6
/// that wait now and then never ends; a start must not hang on it.
fn close_aside(consumer: BaseConsumer) {
    if crate::offcore::spawn("kafka-close", move || drop(consumer)).is_err() {
        tracing::warn!("no thread to close a Kafka consumer on");
    }
}

/// A record with where it was read.
#[derive(Debug, Clone)]
pub struct Located {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// When the producer wrote it (ms since the epoch), if the broker says.
    pub timestamp_ms: Option<i64>,
    pub payload: Vec<u8>,
}

/// Follows every partition of some topics from given offsets, for consumers that keep
/// their own positions (no consumer group, no committed offsets: the PostgreSQL writer
/// stores them with its rows).
pub struct Tail {
    consumer: BaseConsumer,
    /// Per topic and partition, the offset reading is meant to start at (see [`REREAD`]).
    from: Vec<(String, i32, i64)>,
}

/// Which partitions a reader takes when several share some topics: partition `p` when
/// `p % of == index`. Records with one key have one partition number in every topic
/// only when the topics have as many partitions each; when they differ, reader 0 takes
/// every partition and the others none.
#[derive(Clone, Copy, Debug)]
pub struct Share {
    pub index: usize,
    pub of: usize,
}

impl Tail {
    /// `from(topic, partition)`: the offset to start at (`None`: the beginning).
    ///
    /// # Errors
    /// The broker unreachable or a topic unknown.
    pub fn new(
        brokers: &str,
        topics: &[String],
        from: &dyn Fn(&str, i32) -> Option<i64>,
        patience: Duration,
        share: Share,
    ) -> Result<Self, String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "exchange-tail")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .create()
            .map_err(|e| format!("kafka consumer: {e}"))?;
        let mut counts = Vec::new();
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), patience).map_err(|e| format!("{topic}: metadata: {e}"))?;
            let partitions = metadata.topics().first().map_or(0, |t| t.partitions().len());
            if partitions == 0 {
                return Err(format!("{topic}: no partitions"));
            }
            counts.push(partitions);
        }
        let aligned = counts.windows(2).all(|w| w[0] == w[1]);
        let mine = |p: usize| if aligned { p % share.of.max(1) == share.index } else { share.index == 0 };
        let mut tpl = TopicPartitionList::new();
        let mut starts = Vec::new();
        for (topic, partitions) in topics.iter().zip(counts) {
            for p in (0..partitions).filter(|p| mine(*p)).map(|p| p as i32) {
                let start = from(topic, p).unwrap_or(0);
                let reread = start.saturating_sub(REREAD as i64).max(0);
                tpl.add_partition_offset(topic, p, Offset::Offset(reread)).map_err(|e| e.to_string())?;
                starts.push((topic.clone(), p, start));
            }
        }
        consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
        Ok(Self { consumer, from: starts })
    }

    /// Up to `max` records, waiting at most `wait` for the first and then for the rest.
    ///
    /// # Errors
    /// A fetch error from the broker.
    pub fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Located>, String> {
        let deadline = std::time::Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < max {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left.min(Duration::from_millis(100))) {
                Some(Ok(m)) if self.from.iter().any(|(t, p, o)| t == m.topic() && *p == m.partition() && m.offset() < *o) => {}
                Some(Ok(m)) => out.push(Located {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(e)) if !passing(&e) => return Err(e.to_string()),
                Some(Err(e)) => tracing::warn!(error = %e, "following goes on: the Kafka client reconnects by itself"),
                None if !out.is_empty() => break,
                None => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitioner_matches_kafka() {
        // Values from Kafka's Utils.murmur2 (org.apache.kafka.common.utils).
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58_897_971);
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
        assert!((0..8).contains(&partition_for(b"BTC-PERP", 8)));
    }

    #[test]
    fn a_stream_gathers_while_its_batches_queue_and_does_not_flap() {
        let mut pace = Pace::default();
        let mut now = std::time::Instant::now();
        let mut send = |pace: &mut Pace, can_gather: bool| {
            now += Duration::from_millis(1);
            (pace.sent(can_gather, now), now)
        };
        // Batches sent with one ahead each: below BUSY, each is sent at once.
        let first = send(&mut pace, true).0;
        for _ in 0..50 {
            drop(send(&mut pace, true));
        }
        assert!(!pace.gathering, "one batch ahead is not busy ({})", pace.ahead);
        // Eight ahead: busy, unless there is no linger to gather for.
        let held: Vec<_> = (0..7).map(|_| send(&mut pace, true).0).collect();
        for _ in 0..20 {
            drop(send(&mut pace, false));
        }
        assert!(!pace.gathering, "no linger configured");
        let at = send(&mut pace, true).1;
        assert!(pace.gathering(at), "eight batches ahead ({})", pace.ahead);
        drop((first, held));
        // Two ahead keep a gathering stream gathering; none ahead for a while ends it.
        let first = (send(&mut pace, true).0, send(&mut pace, true).0);
        for _ in 0..50 {
            drop(send(&mut pace, true));
        }
        assert!(pace.gathering, "flapped back at two batches ahead ({})", pace.ahead);
        drop(first);
        for _ in 0..30 {
            drop(send(&mut pace, true));
        }
        assert!(!pace.gathering, "still gathering with nothing ahead ({})", pace.ahead);
        // Busy again, then a pause: the first batch after it goes out at once, and
        // the burst before it counts for nothing.
        let held: Vec<_> = (0..8).map(|_| send(&mut pace, true).0).collect();
        for _ in 0..30 {
            drop(send(&mut pace, true));
        }
        let at = send(&mut pace, true).1;
        assert!(pace.gathering(at));
        drop(held);
        let later = at + Pace::IDLE;
        assert!(!pace.gathering(later), "gathering after a pause");
        drop(pace.sent(true, later));
        assert!(!pace.gathering(later) && pace.ahead == 0, "the burst still counts ({})", pace.ahead);
    }
}
